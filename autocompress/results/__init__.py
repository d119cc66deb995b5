"""A run directory: its layout, atomic writes, the trial table and the Pareto set."""

from autocompress.results.pareto import pareto_front
from autocompress.results.rundir import RunDir, atomic_write_bytes, atomic_write_text

__all__ = ["RunDir", "atomic_write_bytes", "atomic_write_text", "pareto_front"]
