"""report.md: the run's headline and one table of the baselines and the Pareto models, for a terminal or a PR."""

from __future__ import annotations

from autocompress.report.data import PROMOTED_HEADINGS, ReportData, completed, funnel_summary, promoted_cells
from autocompress.results.preprocessing import recorded_preprocessing


def report_markdown(data: ReportData) -> str:
    meta, dev = data.meta, data.device
    md = [f"# autocompress report: {meta['run_name']}", "",
          f"Model `{meta['model']}` on `{meta['dataset']}`; {len(data.done)} trials done, {len(data.failed)} failed; "
          f"device: {dev.get('cpu', '?')}, ORT {dev.get('onnxruntime', '?')}, {dev.get('threads', '?')} thread(s).", "",
          *([f"Validation split: {meta['split_rule']}.", ""] if meta.get("split_rule") else []),
          *([f"**Warning: {meta['split_warning']}**", ""] if meta.get("split_warning") else []),
          *([recorded_preprocessing(meta), ""] if meta.get("preprocessing") else []),
          "| model | val acc % | test acc % | latency ms | p90 ms | speed-up | size MB | file |",
          "|---|---|---|---|---|---|---|---|"]
    for name, b in data.baselines.items():
        if not completed(b):
            md.append(f"| baseline {name} | failed: {b.get('error', '')} |||||||")
            continue
        md.append(f"| baseline {name} | {b['val_accuracy']:.2f} | {b['test_accuracy']:.2f} | {b['latency_ms']:.3f} | "
                  f"{b['latency_p90_ms']:.3f} | {data.speed(b)} | {b['size_bytes'] / 1e6:.3f} | {b['onnx']} |")
    for _, r in data.pareto.iterrows():
        md.append(f"| trial {int(r['trial'])} | {r['val_accuracy']:.2f} | {r['test_accuracy']:.2f} | "
                  f"{r['latency_ms']:.3f} | {r['latency_p90_ms']:.3f} | {data.speed(r)} | "
                  f"{r['size_bytes'] / 1e6:.3f} | {r['onnx']} |")
    err = (meta.get("latency_model") or {}).get("errors", {})
    if err.get("n"):
        md += ["", f"Latency predicted before training (measured latency model of the device): error over "
                   f"{err['n']} trials median {err['median_pct']:.1f}%, worst {err['worst_pct']:.1f}%."]
    md += _funnel_lines(data)
    for f in data.finals:  # `autocompress finalize`: each final model's own section
        md += ["", (data.path / "final" / f["name"] / "report.md").read_text().rstrip()]
    return "\n".join(md) + "\n"


def _funnel_lines(data: ReportData) -> list[str]:
    """The funnel's line and its promoted candidates; [] for a run from before the funnel."""
    f = data.funnel
    if f is None:
        return []
    if f.status in ("off", "failed"):
        return ["", funnel_summary(f)]
    out = ["", "## Funnel: score many, fine-tune few", "", funnel_summary(f)]
    if f.promoted:
        out += ["", "| " + " | ".join(PROMOTED_HEADINGS) + " |", "|" + "---|" * len(PROMOTED_HEADINGS)]
        out += ["| " + " | ".join(promoted_cells(f, p)) + " |" for p in f.promoted]
    return out
