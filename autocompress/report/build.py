"""Build the report from a run directory's files only, so `autocompress report RUN` can rebuild it.

Layout: data.py reads the run into a ReportData (what the report says); html.py lays out report.html, one function
per section, with figures.py (plotly) and notes.py (how the numbers were measured); markdown.py writes report.md."""

from __future__ import annotations

import json
from pathlib import Path

from autocompress.report.data import BASELINE_LABELS, PARITY_LIMIT, confirm_rounds, load_report_data, pareto_config
from autocompress.report.html import report_page
from autocompress.report.markdown import report_markdown
from autocompress.results.rundir import RunDir, atomic_write_text

__all__ = ["write_report", "pareto_config", "PARITY_LIMIT", "BASELINE_LABELS"]


def write_report(rd: RunDir | str | Path) -> Path:
    """Write pareto.json, report.html and report.md into the run directory; returns report.html's path."""
    rd = rd if isinstance(rd, RunDir) else RunDir.open(rd)
    data = load_report_data(rd)
    # pareto.json first, and config.json read only after it, as before: a bad config leaves pareto.json written
    rd.write_json(rd.pareto_json, json.loads(data.pareto.to_json(orient="records")))
    atomic_write_text(rd.report_html, report_page(data, confirm_rounds(rd)))
    atomic_write_text(rd.report_md, report_markdown(data))
    return rd.report_html
