"""The public face: search, resume, load_run, finalize, and what they return."""

from autocompress.api._finalize import finalize
from autocompress.api._search import load_run, resume, search
from autocompress.engine.plan import make_config, plan, plan_resume

__all__ = ["search", "resume", "load_run", "finalize", "plan", "plan_resume", "make_config"]
