"""The report's plotly figures: accuracy vs latency, hypervolume over the trials, where the time went, the funnel."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from autocompress.report.data import BASELINE_LABELS, FunnelData, completed
from autocompress.results.funnel import Scored
from autocompress.results.stages import own_stage_columns

_BASELINE_STYLE = {"fp32": ("star", "#111827"), "int8": ("star", "#dc2626"), "prune25-int8": ("diamond", "#ea580c"),
                   "prune50-int8": ("diamond", "#a16207")}


def pareto_scatter(table: pd.DataFrame, pareto: pd.DataFrame, baselines: dict) -> go.Figure:
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
        if completed(b):
            fig.add_trace(_baseline_marker(key, b))
    fig.update_layout(xaxis_title="latency, median ms (batch 1, ONNX Runtime, measured on the device)",
                      yaxis_title="validation accuracy (%) of the ONNX artifact",
                      template="plotly_white", height=520, legend=dict(orientation="h", y=-0.18),
                      margin=dict(l=60, r=20, t=30, b=40))
    return fig


def _baseline_marker(key: str, b: dict) -> go.Scatter:
    name = BASELINE_LABELS.get(key, key)
    symbol, color = _BASELINE_STYLE.get(key, ("diamond", "#6b7280"))
    return go.Scatter(x=[b["latency_ms"]], y=[b["val_accuracy"]], mode="markers+text", name=name,
                      text=[name], textposition="top center", textfont=dict(size=10),
                      marker=dict(symbol=symbol, size=15, color=color, line=dict(width=1, color="white")),
                      hovertext=[f"{name}<br>val {b['val_accuracy']:.2f}% · "
                                 f"test {b['test_accuracy']:.2f}%<br>"
                                 f"{b['latency_ms']:.3f} ms<br>{b['size_bytes'] / 1e6:.3f} MB"],
                      hoverinfo="text")


def hypervolume_figure(table: pd.DataFrame, baselines: dict) -> tuple[go.Figure, str]:
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


def stage_figure(done: pd.DataFrame) -> tuple[go.Figure, str] | None:
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
    return fig, _stage_text(done, means) + _cache_text(done)


def _stage_text(done: pd.DataFrame, means: pd.Series) -> str:
    own = float(means[own_stage_columns(done)].sum())
    if "latency_held_s" not in done.columns:  # a run from before measurements overlapped the next trial
        return (f"Mean per completed trial that ran ({len(done)}): {float(means.sum()):.1f} s, of which fine-tuning "
                f"{float(means.get('t_finetune', 0)):.1f} s and everything else "
                f"{own + float(means.get('t_measure', 0)):.1f} s "
                "(the latency measurement included: in this run the search waited for it).")
    held = float(done["latency_held_s"].fillna(0).mean())
    return (f"Mean per completed trial that ran ({len(done)}): fine-tuning "
            f"{float(means.get('t_finetune', 0)):.1f} s; outside it, "
            f"<b>{own + held:.2f} s</b>: {own:.2f} s of the trial's own stages (prune, PyTorch evaluation, "
            "export, quantization, kernel check, ONNX Runtime evaluation) and "
            f"{held:.2f} s during which the device held the running trials still for its latency sessions "
            "(column latency_held_s). The latency measurement took "
            f"{float(means.get('t_measure', 0)):.1f} s of wall time (its sessions spread out and checked against "
            "interference), while the next trial fine-tuned.")


def _cache_text(done: pd.DataFrame) -> str:
    src = done["latency_source"].astype(str) if "latency_source" in done.columns else pd.Series(dtype=str)
    cached = int(src.str.startswith("cache").sum())
    if not cached:
        return ""
    return (f" {cached} of these {len(done)} latencies came from this device's cache (an identical graph "
            "measured earlier with the same settings), so their measurement took no time here; see the "
            "latency_source column.")


def prediction_figure(done: pd.DataFrame, model: dict) -> tuple[go.Figure, str] | None:
    """The latency model's prediction for each trial (made before it trained) against its measured latency."""
    if "latency_predicted_ms" not in done.columns:
        return None
    rows = done[done["latency_predicted_ms"].notna()]
    for col in ("duplicate_of", "reused"):  # a repeat, or a baseline's model the fit was made on: not predictions
        if col in rows.columns:
            rows = rows[rows[col].isna()]
    if not len(rows):
        return None
    lo = float(min(rows["latency_ms"].min(), rows["latency_predicted_ms"].min())) * 0.9
    hi = float(max(rows["latency_ms"].max(), rows["latency_predicted_ms"].max())) * 1.1
    fig = go.Figure([
        go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="#9ca3af", dash="dot"), name="exact"),
        go.Scatter(x=rows["latency_predicted_ms"], y=rows["latency_ms"], mode="markers", name="trials",
                   marker=dict(color="#2563eb", size=9), hoverinfo="text",
                   text=[f"trial {int(r.trial)}<br>predicted {r.latency_predicted_ms:.3f} ms<br>"
                         f"measured {r.latency_ms:.3f} ms" for r in rows.itertuples()]),
    ])
    fig.update_layout(xaxis_title="predicted before training, ms", yaxis_title="measured on the device, ms",
                      template="plotly_white", height=380, width=560, showlegend=False,
                      margin=dict(l=60, r=20, t=10, b=40))
    err = model.get("errors", {})
    summary = (f"Error over {err['n']} trials: median <b>{err['median_pct']:.1f}%</b>, worst "
               f"<b>{err['worst_pct']:.1f}%</b>. " if err.get("n") else "")
    text = (f"Before each trial trains, its latency is predicted from a table of its layers, each timed alone on "
            f"this device at every channel count and precision the space offers ({model.get('entries', '?')} "
            f"timings, cached per device), fitted to the whole models measured by then (the baselines, "
            f"{model.get('proxies', 0)} random configurations measured untrained, then each trial). {summary}"
            "Column latency_predicted_ms of trials.csv.")
    return fig, text


# the funnel's candidates by origin: (legend name, symbol, colour, size); the uniform ladder stands out, being the
# configurations a user could make by hand
FUNNEL_ORIGINS = {"uniform": ("uniform ladder (every ratio, int8)", "star", "#dc2626", 14),
                  "scan": ("sensitivity scan's picks", "diamond", "#ea580c", 10),
                  "sampled": ("sampled", "circle", "#9ca3af", 7)}


def funnel_figure(funnel: FunnelData) -> go.Figure | None:
    """Each distinct model the funnel scored: its score (accuracy on the fixed sample) against its predicted latency,
    by origin, the promoted ones ringed, the ladder's targets as dashed lines; None when none was scored."""
    scored = sorted(funnel.scored, key=lambda s: s.predicted_ms or 0.0)
    if not scored:
        return None
    fig = go.Figure()
    for origin in (*(o for o in FUNNEL_ORIGINS if o != "uniform"), "uniform"):  # the ladder drawn over the rest
        rows = [s for s in scored if _origin(s) == origin]
        if rows:
            fig.add_trace(_origin_trace(funnel, rows, origin))
    for trace in _promoted_traces(funnel):
        fig.add_trace(trace)
    for t in funnel.targets_ms:
        fig.add_vline(x=t, line=dict(dash="dash", color="#6b7280", width=1), annotation_text=f"target {t:.3g} ms",
                      annotation_position="top", annotation_font_size=10)
    fig.update_layout(xaxis_title="latency predicted by the latency model before building, ms",
                      yaxis_title="score: accuracy (%) on the fixed validation sample, untrained",
                      template="plotly_white", height=480, legend=dict(orientation="h", y=-0.2),
                      margin=dict(l=60, r=20, t=30, b=40))
    return fig


def _origin(s: Scored) -> str:
    return s.origin if s.origin in FUNNEL_ORIGINS else "sampled"


def _origin_trace(funnel: FunnelData, rows: list[Scored], origin: str) -> go.Scatter:
    name, symbol, color, size = FUNNEL_ORIGINS[origin]
    return go.Scatter(x=[s.predicted_ms for s in rows], y=[s.accuracy for s in rows],
                      mode="lines+markers" if origin == "uniform" else "markers", name=name,
                      line=dict(color=color, dash="dot", width=1),  # the ladder as a line: one ratio to the next
                      marker=dict(symbol=symbol, size=size, color=color, opacity=1.0 if origin != "sampled" else 0.6,
                                  line=dict(width=1, color="white")),
                      text=[_candidate_hover(funnel, s) for s in rows], hoverinfo="text")


def _promoted_traces(funnel: FunnelData) -> list[go.Scatter]:
    """Rings around the promoted candidates: thick where the trial that fine-tuned one is on the final front."""
    out = []
    for on_front, name, width in ((False, "promoted (fine-tuned first)", 2),
                                  (True, "promoted, its trial on the final Pareto front", 4)):
        rows = [p.candidate for p in funnel.promoted
                if p.candidate.scored and (p.trial is not None and p.trial.on_front) == on_front]
        if rows:
            out.append(go.Scatter(x=[s.predicted_ms for s in rows], y=[s.accuracy for s in rows], mode="markers",
                                  name=name, marker=dict(symbol="circle-open", size=22, color="#2563eb",
                                                         line=dict(width=width, color="#2563eb")),
                                  text=[_candidate_hover(funnel, s) for s in rows], hoverinfo="text"))
    return out


def _candidate_hover(funnel: FunnelData, s: Scored) -> str:
    target, rank, trial = funnel.target_ms(s), funnel.ranks.get(s.key), funnel.trials.get(s.number)
    where = (f"target {target:.3g} ms" if target is not None else "no target")
    if rank is not None:
        where += f", rank {rank.rank} of {rank.of} there"
    ran = "not fine-tuned"
    if trial is not None:
        ran = f"fine-tuned as trial {trial.trial} ({trial.state.lower()})"
        if trial.val_accuracy is not None and trial.latency_ms is not None:
            ran += f": val {trial.val_accuracy:.2f}%, {trial.latency_ms:.3f} ms"
    loss = f"{s.loss:.4f}" if s.loss is not None else "?"
    predicted = f"{s.predicted_ms:.3f}" if s.predicted_ms is not None else "?"
    return (f"candidate {s.number} ({FUNNEL_ORIGINS[_origin(s)][0]})<br>score {s.accuracy:.2f}% · loss {loss}"
            f"<br>predicted {predicted} ms · {where}<br>{ran}")
