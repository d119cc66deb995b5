"""The public face: search, resume, load_run, finalize, and what they return."""

from autocompress.api._finalize import finalize
from autocompress.api._search import load_run, search
from autocompress.engine.plan import make_config, plan

__all__ = ["search", "plan", "load_run", "make_config", "finalize"]
