"""report.html (one self-contained page, plotly.js inlined, works offline) and report.md, from stored results."""

from autocompress.report.build import write_report

__all__ = ["write_report"]
