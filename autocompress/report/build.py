"""Build the report from a run directory's files only, so `autocompress report RUN` can rebuild it."""

from __future__ import annotations

import html
import json
import statistics
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from autocompress.config import BASELINES
from autocompress.results.pareto import fastest_within, pareto_front
from autocompress.results.rundir import RunDir, atomic_write_text
from autocompress.results.stages import own_stage_columns

__all__ = ["write_report", "pareto_config", "PARITY_LIMIT", "BASELINE_LABELS"]

BASELINE_LABELS = {b.name: b.label for b in BASELINES}
_BASELINE_STYLE = {"fp32": ("star", "#111827"), "int8": ("star", "#dc2626"), "prune25-int8": ("diamond", "#ea580c"),
                   "prune50-int8": ("diamond", "#a16207")}
PARITY_LIMIT = 0.5  # points of accuracy between the artifact and its PyTorch model that the report flags

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;color:#222;
padding:0 16px}
h1{margin-bottom:4px} h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-top:0} table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right} th{background:#f5f5f5} td.l,th.l{text-align:left}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:170px}
.card b{font-size:20px;display:block}.warn{color:#b45309}.bad{color:#b91c1c}.ok{color:#15803d}
td.fp32{background:#e5e7eb}td.int8{background:#bfdbfe}td.int4{background:#c4b5fd}.scroll{overflow-x:auto}
code{background:#f3f4f6;padding:1px 4px;border-radius:3px}
"""


def _f(x, nd=2, suffix=""):
    return "" if x is None or (isinstance(x, float) and pd.isna(x)) else f"{x:.{nd}f}{suffix}"


def pareto_config(row: pd.Series, space: list[dict]) -> dict[str, dict]:
    """Per-layer view of one trial: kept channels per group, precision per layer."""
    groups = {s["name"]: s for s in space if s["kind"] == "group"}
    layer_prec = {}
    for s in space:
        if s["kind"] == "layer":
            v = row.get(f"quant:{s['name']}")
            layer_prec[s["name"]] = v if isinstance(v, str) else s["choices"][0]
    kept = {}
    for g, s in groups.items():
        v = row.get(f"channels:{g}")
        kept[g] = (int(v) if pd.notna(v) else s["channels"], s["channels"])
    return {"precision": layer_prec, "kept": kept}


def _table(df: pd.DataFrame, cols: list[tuple[str, str, callable]], left: set[str] = frozenset()) -> str:
    head = "".join(f"<th class='{'l' if c in left else ''}'>{html.escape(t)}</th>" for c, t, _ in cols)
    body = []
    for _, r in df.iterrows():
        cells = "".join(f"<td class='{'l' if c in left else ''}'>{fn(r)}</td>" for c, _, fn in cols)
        body.append(f"<tr>{cells}</tr>")
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _scatter(table: pd.DataFrame, pareto: pd.DataFrame, baselines: dict) -> go.Figure:
    fig = go.Figure()
    done = table[table["state"] == "COMPLETE"]
    dominated = done[~done["trial"].isin(pareto["trial"])]
    size_mb = lambda s: s / 1e6
    smax = max([done["size_bytes"].max() if len(done) else 1]
               + [b["size_bytes"] for b in baselines.values() if "size_bytes" in b])

    def marker_size(s):
        return 8 + 22 * (s / smax) ** 0.5

    def hover(df):
        return [f"trial {int(r.trial)}<br>val {r.val_accuracy:.2f}% · test {r.test_accuracy:.2f}%<br>"
                f"{r.latency_ms:.3f} ms (p90 {r.latency_p90_ms:.3f})<br>{size_mb(r.size_bytes):.3f} MB"
                for r in df.itertuples()]

    fig.add_trace(go.Scatter(x=dominated["latency_ms"], y=dominated["val_accuracy"], mode="markers",
                             name="dominated",
                             marker=dict(size=marker_size(dominated["size_bytes"]), color="#9ca3af", opacity=0.6),
                             text=hover(dominated), hoverinfo="text"))
    p = pareto.sort_values("latency_ms")
    fig.add_trace(go.Scatter(x=p["latency_ms"], y=p["val_accuracy"], mode="markers",
                             name="Pareto (acc, latency, size)",
                             marker=dict(size=marker_size(p["size_bytes"]), color="#2563eb"),
                             text=hover(p), hoverinfo="text"))
    for key, b in baselines.items():
        if b.get("state", "COMPLETE") != "COMPLETE":
            continue
        name = BASELINE_LABELS.get(key, key)
        symbol, color = _BASELINE_STYLE.get(key, ("diamond", "#6b7280"))
        fig.add_trace(go.Scatter(x=[b["latency_ms"]], y=[b["val_accuracy"]], mode="markers+text", name=name,
                                 text=[name], textposition="top center", textfont=dict(size=10),
                                 marker=dict(symbol=symbol, size=15, color=color, line=dict(width=1, color="white")),
                                 hovertext=[f"{name}<br>val {b['val_accuracy']:.2f}% · "
                                            f"test {b['test_accuracy']:.2f}%<br>"
                                            f"{b['latency_ms']:.3f} ms<br>{b['size_bytes'] / 1e6:.3f} MB"],
                                 hoverinfo="text"))
    fig.update_layout(xaxis_title="latency, median ms (batch 1, ONNX Runtime, measured on the device)",
                      yaxis_title="validation accuracy (%) of the ONNX artifact",
                      template="plotly_white", height=520, legend=dict(orientation="h", y=-0.18),
                      margin=dict(l=60, r=20, t=30, b=40))
    return fig


def _hv_figure(table: pd.DataFrame, baselines: dict) -> tuple[go.Figure, str]:
    from autocompress.results.hypervolume import FLOOR_POINTS, baseline_hypervolumes, hypervolume_curve

    curve = hypervolume_curve(table, baselines["fp32"])
    base_hv = baseline_hypervolumes(baselines)
    fig = go.Figure(go.Scatter(x=curve["trials"], y=curve["hypervolume"], mode="lines+markers", name="search",
                               line=dict(color="#2563eb", shape="hv")))
    for (k, v), dash in zip(base_hv.items(), ("dot", "dash", "dashdot", "longdash", "solid"), strict=False):
        fig.add_hline(y=v, line=dict(dash=dash, color="#6b7280", width=1),
                      annotation_text=f"{BASELINE_LABELS.get(k, k)}: {v:.3f}", annotation_position="right")
    fig.update_layout(xaxis_title="trials", yaxis_title="hypervolume (accuracy x latency, FP32 = reference)",
                      template="plotly_white", height=360, margin=dict(l=60, r=220, t=20, b=40), showlegend=False)
    final = float(curve["hypervolume"].iloc[-1]) if len(curve) else 0.0
    text = (f"Hypervolume of the search's front after {len(curve)} trials: <b>{final:.3f}</b>; "
            f"of all uniform baselines together: <b>{base_hv['all uniform']:.3f}</b>. "
            "Each model is a point (fraction of FP32 latency removed, accuracy scaled so that "
            f"FP32 = 1 and FP32 - {FLOOR_POINTS:g} points = 0); the hypervolume is the area the points dominate. "
            "Higher is better.")
    return fig, text


def _stage_figure(done: pd.DataFrame) -> tuple[go.Figure, str] | None:
    """Where the time went: mean seconds per stage of the completed trials."""
    cols = [c for c in done.columns if c.startswith("t_")]
    if "reused" in done.columns:
        done = done[done["reused"].isna()]  # a reused result took no time of its own
    if not cols or not len(done):
        return None
    means = done[cols].mean().fillna(0)
    fig = go.Figure(go.Bar(x=means.values, y=[c[2:].replace("_", " ") for c in cols], orientation="h",
                           marker_color="#2563eb", text=[f"{v:.2f} s" for v in means.values], textposition="auto"))
    fig.update_layout(xaxis_title="seconds per trial (mean)", template="plotly_white", height=60 + 28 * len(cols),
                      margin=dict(l=120, r=20, t=10, b=40))
    own = float(means[own_stage_columns(done)].sum())
    if "latency_held_s" not in done.columns:  # a run from before measurements overlapped the next trial
        text = (f"Mean per completed trial that ran ({len(done)}): {float(means.sum()):.1f} s, of which fine-tuning "
                f"{float(means.get('t_finetune', 0)):.1f} s and everything else "
                f"{own + float(means.get('t_measure', 0)):.1f} s "
                "(the latency measurement included: in this run the search waited for it).")
    else:
        held = float(done["latency_held_s"].fillna(0).mean())
        text = (f"Mean per completed trial that ran ({len(done)}): fine-tuning "
                f"{float(means.get('t_finetune', 0)):.1f} s; outside it, "
                f"<b>{own + held:.2f} s</b>: {own:.2f} s of the trial's own stages (prune, PyTorch evaluation, "
                "export, quantization, kernel check, ONNX Runtime evaluation) and "
                f"{held:.2f} s during which the device held the running trials still for its latency sessions "
                "(column latency_held_s). The latency measurement took "
                f"{float(means.get('t_measure', 0)):.1f} s of wall time (its sessions spread out and checked against "
                "interference), while the next trial fine-tuned.")
    src = done["latency_source"].astype(str) if "latency_source" in done.columns else pd.Series(dtype=str)
    cached = int(src.str.startswith("cache").sum())
    if cached:
        text += (f" {cached} of these {len(done)} latencies came from this device's cache (an identical graph "
                 "measured earlier with the same settings), so their measurement took no time here; see the "
                 "latency_source column.")
    return fig, text


def _dominated_by_baselines(pareto: pd.DataFrame, baselines: dict) -> list[tuple[int, str]]:
    """(trial, baseline) pairs where the baseline is at least as good on validation accuracy, latency and
    size and better on one: the search then failed to beat a configuration a user could make by hand."""
    out = []
    for _, r in pareto.iterrows():
        for k, b in baselines.items():
            if b.get("state", "COMPLETE") != "COMPLETE":
                continue
            ge = (b["val_accuracy"] >= r["val_accuracy"] and b["latency_ms"] <= r["latency_ms"]
                  and b["size_bytes"] <= r["size_bytes"])
            gt = (b["val_accuracy"] > r["val_accuracy"] or b["latency_ms"] < r["latency_ms"]
                  or b["size_bytes"] < r["size_bytes"])
            if ge and gt:
                out.append((int(r["trial"]), k))
    return out


def write_report(rd: RunDir | str | Path) -> Path:
    rd = rd if isinstance(rd, RunDir) else RunDir.open(rd)
    meta = rd.read_json(rd.meta)
    baselines = rd.read_json(rd.baselines_json)
    table = rd.read_table() if rd.trials_csv.is_file() else pd.DataFrame(columns=["trial", "state"])
    pareto = pareto_front(table) if len(table) else table
    rd.write_json(rd.pareto_json, json.loads(pareto.to_json(orient="records")))
    fp32 = baselines["fp32"]
    done = table[table["state"] == "COMPLETE"] if len(table) else table
    failed = table[~table["state"].isin(["COMPLETE", "DUPLICATE"])] if len(table) else table

    def speed(r):
        return f"{fp32['latency_ms'] / r['latency_ms']:.2f}x"

    best = fastest_within(pareto, fp32["val_accuracy"], 1.0)
    dev = meta.get("device", {})
    cards = [
        ("FP32 baseline", f"{fp32['latency_ms']:.3f} ms",
         f"val {fp32['val_accuracy']:.2f}% · test {fp32['test_accuracy']:.2f}% · {fp32['size_bytes'] / 1e6:.2f} MB"),
        ("uniform int8 (PTQ)", f"{baselines['int8']['latency_ms']:.3f} ms",
         f"val {baselines['int8']['val_accuracy']:.2f}% · {speed(baselines['int8'])} vs FP32")
        if "int8" in baselines else None,
        ("fastest within 1 pt (val)", f"{best['latency_ms']:.3f} ms" if best is not None else "none",
         f"trial {int(best['trial'])} · {speed(best)} · test {best['test_accuracy']:.2f}%" if best is not None else ""),
        ("trials", f"{len(done)} done · "
                   f"{int((failed['state'] == 'STOPPED').sum()) if len(failed) else 0} stopped early · "
                   f"{int((failed['state'] != 'STOPPED').sum()) if len(failed) else 0} failed",
         f"{meta.get('budget', '')} budget · {meta.get('wall_seconds', '?')} s wall"),
    ]
    cards_html = "".join(f"<div class='card'>{t}<b>{v}</b><span class='sub'>{s}</span></div>"
                         for c in cards if c for t, v, s in [c])

    fig = _scatter(table if len(table) else pd.DataFrame(columns=["state"]), pareto, baselines) if len(done) else None
    plot_html = (fig.to_html(full_html=False, include_plotlyjs=True) if fig is not None
                 else "<p>No completed trials yet.</p>")
    hv_html = ""
    if len(done):
        hv_fig, hv_text = _hv_figure(table, baselines)
        hv_html = (f"<h2>Search quality</h2><p class='sub'>{hv_text}</p>"
                   + hv_fig.to_html(full_html=False, include_plotlyjs=False))
        stage = _stage_figure(done)
        if stage is not None:
            hv_html += (f"<h2>Where the time went</h2><p class='sub'>{stage[1]}</p>"
                        + stage[0].to_html(full_html=False, include_plotlyjs=False))

    def kernel_cell(r):
        req, on = int(r.get("int8_requested", 0) or 0), int(r.get("int8_on_integer_kernel", 0) or 0)
        cls = "ok" if on == req else "bad"
        return f"<span class='{cls}'>{on}/{req}</span>"

    pcols = [
        ("trial", "trial", lambda r: str(int(r["trial"]))),
        ("val_accuracy", "val acc %", lambda r: _f(r["val_accuracy"])),
        ("test_accuracy", "test acc %", lambda r: _f(r["test_accuracy"])),
        ("torch_test_accuracy", "PyTorch test %", lambda r: _f(r["torch_test_accuracy"])),
        ("latency_ms", "latency ms", lambda r: _f(r["latency_ms"], 3)),
        ("latency_p90_ms", "p90 ms", lambda r: _f(r["latency_p90_ms"], 3)),
        ("speedup", "speed-up", speed),
        ("size_bytes", "size MB", lambda r: _f(r["size_bytes"] / 1e6, 3)),
        ("kern", "int8 layers on integer kernels", kernel_cell),
        ("onnx", "file", lambda r: f"<code>{html.escape(str(r['onnx']))}</code>"),
    ]
    pareto_html = _table(pareto, pcols, left={"onnx"}) if len(pareto) else "<p>No Pareto models.</p>"
    base_df = pd.DataFrame([{**b, "name": k} for k, b in baselines.items()
                            if b.get("state", "COMPLETE") == "COMPLETE"])
    bcols = [("name", "baseline", lambda r: html.escape(BASELINE_LABELS.get(r["name"], r["name"])))] + pcols[1:]
    base_html = _table(base_df, bcols, left={"onnx", "name"}) if len(base_df) else ""
    base_html += "".join(f"<p class='bad'>baseline {html.escape(k)} failed: "
                         f"{html.escape(str(b.get('error', '')))}</p>"
                         for k, b in baselines.items() if b.get("state", "COMPLETE") != "COMPLETE")
    dominated_by = _dominated_by_baselines(pareto, baselines)
    if len(pareto):
        base_html += ("<p class='ok'>No baseline dominates any Pareto model (validation accuracy, latency, size).</p>"
                      if not dominated_by else
                      "<p class='bad'>Pareto models dominated by a baseline: " + ", ".join(
                          f"trial {t} by {html.escape(BASELINE_LABELS.get(b, b))}" for t, b in dominated_by) + "</p>")

    # per-layer configuration of each Pareto model
    space = meta.get("space", [])
    cfgs = {int(r["trial"]): pareto_config(r, space) for _, r in pareto.iterrows()}
    trials = list(cfgs)
    rows_html = []
    for s in space:
        if s["kind"] == "group":
            cells = "".join(f"<td>{cfgs[t]['kept'][s['name']][0]}/{s['channels']}</td>" for t in trials)
            n = len(s["members"])
            rows_html.append(f"<tr><td class='l'>group <code>{html.escape(s['name'])}</code> "
                             f"({n} layer{'s' if n > 1 else ''})</td>{cells}</tr>")
    for s in space:
        if s["kind"] == "layer":
            cells = "".join(f"<td class='{cfgs[t]['precision'][s['name']]}'>{cfgs[t]['precision'][s['name']]}</td>"
                            for t in trials)
            rows_html.append(f"<tr><td class='l'>layer <code>{html.escape(s['name'])}</code></td>{cells}</tr>")
    head = "".join(f"<th>trial {t}</th>" for t in trials)
    layers_html = (f"<div class='scroll'><table><tr><th class='l'>kept channels / precision</th>{head}</tr>"
                   f"{''.join(rows_html)}</table></div>")

    # parity: the artifact's accuracy against the PyTorch (fake-quant) model it was exported from
    parity_html = ""
    if len(done) and "torch_test_accuracy" in done.columns:
        gap = done["test_accuracy"] - done["torch_test_accuracy"]
        flagged = done.assign(gap=gap)[gap.abs() > PARITY_LIMIT]
        if len(flagged):
            on_front = set(pareto["trial"].astype(int))
            parity_html = (f"<h2 class='warn'>Parity: {len(flagged)} trial(s) where ONNX Runtime and PyTorch "
                           f"disagree by more than {PARITY_LIMIT:g} point</h2><p class='sub'>Test accuracy of the "
                           "ONNX Runtime artifact minus that of the fake-quantized PyTorch model it was exported from. "
                           "The search ranks on the ONNX Runtime figure, so it is not misled; a gap means the "
                           "fine-tune trained against a different quantization than the one shipped.</p>" + _table(
                flagged, [("trial", "trial", lambda r: str(int(r["trial"]))),
                          ("ort", "ONNX Runtime test %", lambda r: _f(r["test_accuracy"])),
                          ("pt", "PyTorch test %", lambda r: _f(r["torch_test_accuracy"])),
                          ("gap", "gap (points)", lambda r: f"<span class='bad'>{r['gap']:+.2f}</span>"),
                          ("pareto", "Pareto", lambda r: "yes" if int(r["trial"]) in on_front else "")]))

    fail_html = ""
    if len(failed):
        fail_html = "<h2>Failed and early-stopped trials</h2>" + _table(
            failed, [("trial", "trial", lambda r: str(int(r["trial"]))),
                     ("state", "state", lambda r: r["state"]),
                     ("error", "error", lambda r: html.escape(str(r.get("error", ""))))], left={"error"})
    int4_used = (any(str(v) == "int4" for c in table.columns if c.startswith("quant:") for v in table[c].dropna())
                 if len(table) else False)
    notes = ["Every figure is measured on the ONNX file listed, under ONNX Runtime "
             f"{html.escape(str(dev.get('onnxruntime', '?')))} on <b>{html.escape(str(dev.get('cpu', '?')))}</b> "
             f"({dev.get('cores', '?')} cores, ISA {', '.join(dev.get('isa', [])) or 'n/a'}), "
             f"{dev.get('threads', '?')} intra-op thread(s)."]
    ls = meta.get("latency_settings", {})
    notes.append(f"Latency: batch {ls.get('batch')}, {ls.get('warmup')} warm-up runs, repetitions until the median's "
                 f"95% CI is within {100 * ls.get('ci_target', 0):.0f}% (at least {ls.get('min_reps')}, at most "
                 f"{ls.get('max_reps')}), median over {ls.get('sessions')} fresh sessions (up to "
                 f"{ls.get('max_sessions', ls.get('sessions'))} while their medians disagree by more "
                 f"than {200 * ls.get('ci_target', 0):.0f}%); trials on the device's node are paused while it measures"
                 + (", and a session taken beside other load on the machine is discarded and taken again"
                    if "max_contended" in ls else "")
                 + (", as is one beside a slow reference probe (a burst of interference from outside the VM)"
                    if ls.get("probe") else "")
                 + (f" ({ls['max_contended']} times, or for {ls['burst_wait_s']:g} s of pauses if that is longer)"
                    if "burst_wait_s" in ls and "max_contended" in ls else "")
                 + ".")
    rounds = (rd.read_json(rd.config) if rd.config.is_file() else {}).get("confirm_rounds", 0)
    confirmed = [b for b in baselines.values() if b.get("latency_confirm_ms")]
    if len(done) and "latency_confirm_ms" in done.columns:
        confirmed += [r for _, r in done.iterrows()
                      if isinstance(r["latency_confirm_ms"], str) and r["latency_confirm_ms"]]
    if confirmed:
        moved = [abs(float(r["latency_ms"]) / float(r["search_latency_ms"]) - 1)
                 for r in confirmed if r.get("search_latency_ms")]
        notes.append("When the budget was spent, the Pareto models and the baselines were measured again, together, "
                     f"in {rounds} round(s) (each round every model once, in fresh sessions; up to 2 more for a model "
                     "whose rounds disagree by over 4%): their latency is the median of those rounds not flagged "
                     "contended, so the speed-ups compare figures taken minutes apart at most, not across the whole "
                     "run (column latency_confirm_ms holds the rounds, search_latency_ms the figure the search "
                     "ranked on"
                     + (f"; they moved by {100 * statistics.median(moved):.1f}% in the median, "
                        f"{100 * max(moved):.1f}% at most" if moved else "")
                     + ").")
    spoilt = [f"baseline {k}" for k, b in baselines.items() if b.get("latency_contended")]
    if len(done) and "latency_contended" in done.columns:
        spoilt += [f"trial {int(t)}" for t in done[done["latency_contended"].fillna(False).astype(bool)]["trial"]]
    if spoilt:
        notes.append(f"<span class='bad'>Latency of {', '.join(spoilt)} was measured beside other load that did not "
                     "go away (column latency_other_load_cores): re-measure before relying on it.</span>")
    notes.append("The search ranks on the validation split; the test split is reported only. Accuracy is the ONNX "
                 "Runtime artifact's; 'PyTorch test %' is the fake-quantized PyTorch model it was exported from.")
    qf = meta.get("quant_format") or {}
    notes.append("int8 = int8 per-channel weights with uint8 activations (QDQ, fuses into QLinearConv on x86)"
                 + (f"; weights on [{qf['int8_weight_range'][0]}, {qf['int8_weight_range'][1]}] "
                    f"({html.escape(qf['why'])})" if qf else "")
                 + ". "
                 + ("int4 weights are stored packed (ONNX INT4): on ORT's CPU provider they run as DequantizeLinear + "
                    "float Conv, so int4 gives a smaller file but no speed-up here." if int4_used else ""))
    if meta.get("excluded_layers"):
        notes.append("Excluded from quantization: " + ", ".join(f"<code>{html.escape(k)}</code> ({html.escape(v)})"
                                                                 for k, v in meta["excluded_layers"].items()))

    run_name = html.escape(meta["run_name"])
    page = "\n".join([
        f'<!doctype html><html><head><meta charset="utf-8"><title>autocompress · {run_name}</title>',
        f"<style>{_CSS}</style></head><body>",
        f'<h1>autocompress report</h1><p class="sub">{run_name} · model <code>{html.escape(meta["model"])}</code> on',
        f"<code>{html.escape(meta['dataset'])}</code> · started {html.escape(str(meta.get('started', '')))} · "
        f"status {html.escape(str(meta.get('status', '')))}</p>",
        f'<div class="cards">{cards_html}</div>',
        '<h2>Accuracy vs latency</h2><p class="sub">Marker area is proportional to file size. Blue: Pareto-optimal '
        "over (validation accuracy, latency, size).</p>",
        plot_html,
        hv_html,
        f"<h2>Pareto models</h2>{pareto_html}",
        '<h2>Baselines</h2><p class="sub">Measured exactly like the trials. The uniformly pruned ones get the trials\' '
        f"own fine-tune.</p>{base_html}",
        f'<p class="sub">Choose one with <code>autocompress pick {html.escape(str(rd.path))} '
        "--max-latency-ms X</code>.</p>",
        f"<h2>Per-layer configuration of the Pareto models</h2>{layers_html}",
        parity_html,
        fail_html,
        f"<h2>How these numbers were measured</h2><ul>{''.join(f'<li>{n}</li>' for n in notes)}</ul>",
        "</body></html>",
    ])
    atomic_write_text(rd.report_html, page)

    md = [f"# autocompress report: {meta['run_name']}", "",
          f"Model `{meta['model']}` on `{meta['dataset']}`; {len(done)} trials done, {len(failed)} failed; "
          f"device: {dev.get('cpu', '?')}, ORT {dev.get('onnxruntime', '?')}, {dev.get('threads', '?')} thread(s).", "",
          "| model | val acc % | test acc % | latency ms | p90 ms | speed-up | size MB | file |",
          "|---|---|---|---|---|---|---|---|"]
    for name, b in baselines.items():
        if b.get("state", "COMPLETE") != "COMPLETE":
            md.append(f"| baseline {name} | failed: {b.get('error', '')} |||||||")
            continue
        md.append(f"| baseline {name} | {b['val_accuracy']:.2f} | {b['test_accuracy']:.2f} | {b['latency_ms']:.3f} | "
                  f"{b['latency_p90_ms']:.3f} | {speed(b)} | {b['size_bytes'] / 1e6:.3f} | {b['onnx']} |")
    for _, r in pareto.iterrows():
        md.append(f"| trial {int(r['trial'])} | {r['val_accuracy']:.2f} | {r['test_accuracy']:.2f} | "
                  f"{r['latency_ms']:.3f} | {r['latency_p90_ms']:.3f} | {speed(r)} | {r['size_bytes'] / 1e6:.3f} | "
                  f"{r['onnx']} |")
    atomic_write_text(rd.report_md, "\n".join(md) + "\n")
    return rd.report_html
