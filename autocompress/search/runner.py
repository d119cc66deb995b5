"""A whole search: validate -> baseline -> space -> Ray trials driven by Optuna ask/tell -> results.

Why Optuna ask/tell over Ray tasks (rather than Ray Tune): the driver owns one Optuna study whose
storage is a journal file in the run directory (the single source of truth that optuna-dashboard
opens and a resume can replay), trials are plain Ray tasks that run anywhere in a cluster, and
latency is measured by a separate device actor at moments the driver chooses, never beside a
fine-tune. Tune would own the trial loop and the scheduling that the measurement must control.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from autocompress.config import BASELINE_NAMES, SearchConfig
from autocompress.errors import ClusterError, DataError, Interrupted, ModelError, RunError
from autocompress.pipeline.export import export_onnx, fold_batchnorm, layer_nodes
from autocompress.pipeline.finetune import TrainSettings
from autocompress.pipeline.prune import channel_counts, find_groups
from autocompress.pipeline.quantize import quant_format_for
from autocompress.pipeline.trial import StoppedEarly, TrialOutput, TrialSpec, run_pipeline
from autocompress.results.pareto import pareto_front
from autocompress.results.rundir import RunDir, atomic_write_bytes
from autocompress.space import SearchSpace, build_space, load_space_file
from autocompress.tasks.baseline import get_baseline
from autocompress.tasks.data import Splits, load_dataset
from autocompress.tasks.models import build_model

__all__ = ["Prepared", "SearchResult", "prepare", "load_resume_config", "run_search", "search", "warm_start_configs",
           "WARM_START", "BASELINES"]

# Uniform configurations tried first when warm_start is on: (prune ratio, precision). The first two are
# the fine-tuned BASELINES below: when the space allows them exactly, those trials reuse the baselines'
# results and cost nothing, and the sampler starts from the hand-made configurations. Ratio 1.0 means the
# most the space allows (`SearchSpace.uniform` takes the closest allowed choice): the fast end of the front,
# which a sampler finds late in a space this size. On the demo network on this CPU, every group pruned as
# far as the space allows in fp32 is the fastest model of all (0.28 ms; the same in int8 measures 0.40 ms:
# the quantize / dequantize steps cost more than int8 saves on 8-16 channels), and a 40-trial search
# without it never reached it while the uniform grid did (benchmarks/search_quality.md).
WARM_START = ((0.5, "int8"), (0.25, "int8"), (1.0, "fp32"), (1.0, "int8"), (0.5, "fp32"), (0.625, "fp32"),
              (0.375, "int8"))

# The references every run measures exactly like a trial: (name, prune ratio of every group, precision
# of every layer, fine-tuned?). They ignore the search space: what a user would do by hand.
BASELINES = (
    ("fp32", 0.0, "fp32", False),  # the model as trained
    ("int8", 0.0, "int8", False),  # post-training int8, no fine-tune
    ("prune25-int8", 0.25, "int8", True),  # uniform pruning + int8, with the trials' own fine-tune
    ("prune50-int8", 0.5, "int8", True),
)
assert tuple(b[0] for b in BASELINES) == BASELINE_NAMES


def warm_start_configs(space: SearchSpace, scan_picks: list[dict], budget_trials: int | None) -> list[dict]:
    """The configurations a search runs first, in order, distinct, at most a third of a trial budget: the free
    baseline models, the sensitivity scan's picks, then the other WARM_START configurations."""
    uniform = [space.uniform(ratio, prec) for ratio, prec in WARM_START]
    out: list[dict] = []
    for params in uniform[:2] + list(scan_picks) + uniform[2:]:
        if params not in out:
            out.append(params)
    return out if budget_trials is None else out[:max(1, budget_trials // 3)]


@dataclass
class Prepared:
    config: SearchConfig
    splits: Splits
    space: SearchSpace
    run_dir: Path
    run_name: str
    resume: bool = False

    def describe(self) -> dict:
        """What --dry-run prints: the resolved config and the search space."""
        return {
            "config": self.config.dump(), "run_dir": str(self.run_dir), "splits": self.splits.sizes(),
            "input_shape": list(self.splits.input_shape), "search_space": self.space.describe(),
            "optuna_params": len(self.space.params()), "excluded_layers": self.space.excluded,
        }


@dataclass
class SearchResult:
    run_dir: Path
    table: "object"  # pandas.DataFrame of every trial
    pareto: "object"  # pandas.DataFrame of the Pareto trials
    baselines: dict[str, dict]
    report: Path


def _check_ray_address(address: str) -> None:
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray-address {address!r} is not HOST:PORT; use the address `ray start --head` printed, e.g. 127.0.0.1:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as e:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one with `ray start --head` or drop --ray-address to use a local Ray"
        ) from None


def load_resume_config(run_dir: str | Path, *, budget=None) -> SearchConfig:
    """The stored config of a run to resume; `budget` (a Budget) replaces the stored one when given."""
    rd = RunDir(Path(run_dir))
    if not rd.path.is_dir():
        raise RunError(f"--resume {str(run_dir)!r}: no such run directory; pass the directory of an earlier search")
    for needed in (rd.config, rd.meta):
        if not needed.is_file():
            raise RunError(f"--resume {str(run_dir)!r} has no {needed.name}; it was not written by `autocompress search`, start a new search instead")
    data = rd.read_json(rd.config)
    data["out"] = str(rd.path)
    if budget is not None:
        data["budget"] = budget.model_dump()
    return SearchConfig.model_validate(data)


def prepare(config: SearchConfig, *, resume: bool = False) -> Prepared:
    """Everything that can be wrong with the user's input is found here, before anything is written."""
    space_file = load_space_file(config.space)
    splits = load_dataset(config.dataset, input_size=config.input_size, seed=config.seed,
                          data_dir=config.data_dir, download=config.download)
    if config.num_classes is not None and config.num_classes != splits.num_classes:
        raise DataError(f"--num-classes {config.num_classes} does not match the data: {config.dataset} has {splits.num_classes} classes; "
                        "drop --num-classes or point --data-dir at the right data")
    model = build_model(config.model, num_classes=splits.num_classes, in_channels=splits.input_shape[0])
    if config.weights is not None:
        from autocompress.tasks.weights import load_weights

        load_weights(model, config.weights)  # fails now, before anything is written, if they do not fit
    try:
        with torch.no_grad():
            model.eval()(torch.from_numpy(splits.val_x[:1]))
    except Exception as e:  # noqa: BLE001 - any failure here means the model cannot take the data
        raise ModelError(f"model {config.model!r} cannot take inputs of shape {tuple(splits.input_shape)}: {type(e).__name__}: {str(e).splitlines()[0]}; "
                         "choose another --input-size or model") from None
    # The structure (groups, layers) of the untrained model is the trained one's: build the space now,
    # so that a bad rule fails before any training.
    example = torch.from_numpy(splits.val_x[:1])
    try:
        layers, excluded = _quantizable_layers(model, example)
    except Exception as e:  # noqa: BLE001 - an export failure is a property of the user's model
        raise ModelError(f"cannot export model {config.model!r} to ONNX: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                         "autocompress needs a model torch.onnx can export") from None
    try:
        groups = find_groups(model, example)
    except Exception as e:  # noqa: BLE001 - partial support: search precisions only, and say why
        groups = []
        excluded["(pruning)"] = (f"torch-pruning cannot trace the model ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:200]}); no layer is pruned, precisions are still searched")
    space = build_space(space_file, groups, layers, source=str(config.space or "search_spaces/default.yaml"))
    space.excluded = excluded
    if config.ray_address:
        _check_ray_address(config.ray_address)
    if resume:
        run_dir = Path(config.out)  # type: ignore[arg-type]
        run_name = RunDir(run_dir).read_json(RunDir(run_dir).meta)["run_name"]
        return Prepared(config, splits, space, run_dir, run_name, resume=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_name = config.run_name or f"{Path(config.model).name.replace(':', '-')}-{config.dataset}-{stamp}"
    run_dir = Path(config.out) if config.out else Path("reports") / run_name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"run directory {str(run_dir)!r} already exists and is not empty; pass another --out, remove it, "
                       f"or continue it with --resume {run_dir}")
    return Prepared(config, splits, space, run_dir, run_name)


def _quantizable_layers(model: torch.nn.Module, example: torch.Tensor) -> tuple[list[str], dict[str, str]]:
    """Layers whose weights reach a Conv/Gemm/MatMul node of the exported graph, and the ones excluded (why)."""
    import copy

    m = copy.deepcopy(model).eval()
    fold_batchnorm(m, example)
    proto = export_onnx(m, example)
    names = list(channel_counts(m))
    nodes = layer_nodes(proto, names)
    excluded = {n: "no Conv/Gemm node of the exported graph reads its weight" for n in names if n not in nodes}
    return [n for n in names if n in nodes], excluded


MAX_REPEATS = 50  # proposals of already-measured configurations in a row after which the space counts as exhausted


def _model_key(space: SearchSpace, ratios: dict[str, float], precisions: dict[str, str]) -> str:
    """Identity of the model a configuration builds: kept channels of every group, precision of every layer
    (two ratios that round to the same channel count build the same model)."""
    from autocompress.pipeline.prune import kept_channels

    kept = {g.name: kept_channels(g.channels, float(ratios.get(g.name, 0.0)), round_to=space.round_to,
                                  min_channels=space.min_channels) for g in space.groups}
    return json.dumps({"kept": kept, "precision": {l.name: precisions.get(l.name, "fp32") for l in space.layers}}, sort_keys=True)


def _check_device(name: str) -> None:
    import ray

    if name != "local" and ray.cluster_resources().get(name, 0) < 1:
        have = sorted(k for k in ray.cluster_resources() if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("node:"))
        raise ClusterError(f"--device {name!r}: no node of the Ray cluster carries the resource {name!r} (custom resources: {', '.join(have) or 'none'}); "
                           f"join the device with `ray start --address=HEAD --num-cpus=0 --resources='{{\"{name}\": 1}}'` or use --device local")


def _place_device(name: str, settings: dict):
    """The measuring actor, on the driver's node (`local`) or on the node carrying the resource `name`, and
    the fingerprint of the machine it runs on."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if name == "local":
        opts = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)}
    else:
        opts = {"resources": {name: 1}}  # the whole device: one search measures on it at a time
    device = Device.options(**opts).remote(settings)
    try:
        fp = ray.get(device.fingerprint.remote(), timeout=120)
    except ray.exceptions.GetTimeoutError:
        ray.kill(device)
        raise ClusterError(f"--device {name!r} did not start within 120 s: another search is measuring on it; wait for that search or use another device") from None
    return device, fp


def _describe_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    # RayTaskError text starts with the Ray wrapper; keep the user-facing last line
    last = next((l for l in reversed(text) if l.strip()), type(e).__name__)
    return last[:500]


class _Progress:
    """A rich live progress bar: elapsed, trials done / failed, best trade-offs so far."""

    def __init__(self, total_trials: int | None, total_seconds: float | None, enabled: bool,
                 log: Callable[[str], None] = print) -> None:
        import sys

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        # --no-progress, or not a terminal (CI, a log file): no live bar, one line per finished trial instead.
        self.lines = not enabled or not sys.stderr.isatty()
        enabled = enabled and not self.lines
        self.log = log
        self.total_trials, self.total_seconds = total_trials, total_seconds
        cols = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                MofNCompleteColumn() if total_trials else TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
        from rich.console import Console

        self.progress = Progress(*cols, transient=False, disable=not enabled, console=Console(stderr=True))
        self.task = self.progress.add_task("search", total=total_trials or total_seconds, status="")

    def __enter__(self) -> "_Progress":
        self.progress.__enter__()
        return self

    def __exit__(self, *a) -> None:
        self.progress.__exit__(*a)

    def note(self, text: str) -> None:
        self.progress.update(self.task, status=text)

    def trial_line(self, text: str) -> None:
        if self.lines:
            self.log(text)

    def update(self, *, done: int, failed: int, elapsed: float, best: str) -> None:
        completed = done + failed if self.total_trials else min(elapsed, self.total_seconds or 0)
        self.progress.update(self.task, completed=completed, status=f"done {done}  failed {failed}  {best}")


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if address and "RAY_AUTH_MODE" not in os.environ and (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    ):
        # Ray >= 2.5x heads enable token auth when a token exists; a joining driver sends it only in token
        # mode (the documented client set-up). Sending it to a head without auth is harmless.
        os.environ["RAY_AUTH_MODE"] = "token"
        try:  # Ray caches its config at import; refresh it the way Ray's own token set-up does
            from ray._raylet import Config

            Config.initialize("")
        except Exception:  # noqa: BLE001 - older Ray without token auth: nothing to refresh
            pass
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count(), **kwargs)
    except Exception as e:  # noqa: BLE001
        hint = ("check --ray-address, and that this machine has the cluster's token (~/.ray/auth_token or RAY_AUTH_TOKEN)"
                if address else "run `ray stop` and retry")
        raise ClusterError(f"cannot {'join' if address else 'start'} Ray ({_describe_error(e)}); {hint}") from None


def _row(number: int, state: str, params: dict, out: TrialOutput | None, lat: dict | None, onnx_rel: str | None,
         seconds: float, error: str = "", kind: str = "search") -> dict:
    """One trial-table row; `params` are the trial's full choices (`prune:<group>`, `quant:<layer>`)."""
    row: dict = {"trial": number, "kind": kind, "state": state, "duration_s": round(seconds, 2)}
    if out is not None and lat is not None:
        measured = lat.get("source", "measured") == "measured"  # a cached figure cost this trial no measurement
        row.update({
            "val_accuracy": round(out.val_accuracy, 4), "test_accuracy": round(out.test_accuracy, 4),
            "latency_ms": round(lat["median_ms"], 4), "latency_p90_ms": round(lat["p90_ms"], 4),
            "latency_p99_ms": round(lat["p99_ms"], 4), "latency_reps": lat["reps"],
            "latency_source": lat.get("source", "measured"), "latency_paused_trials": lat.get("paused_trials", 0),
            "latency_other_load_cores": lat.get("other_load_cores"), "latency_contended": bool(lat.get("contended", False)),
            "latency_held_s": lat.get("held_s", 0.0) if measured else 0.0,
            "latency_probe_vs_best": lat.get("probe_vs_best"),
            "latency_burst_wait_s": lat.get("burst_wait_s", 0.0) if measured else 0.0,
            "size_bytes": out.size_bytes, "torch_test_accuracy": round(out.torch_test_accuracy, 4), "sha256": out.sha256, "onnx": onnx_rel,
            "int8_requested": len(out.requested_int8),
            "int8_on_integer_kernel": len(set(out.requested_int8) & set(out.integer_layers)),
            "kernels": " ".join(f"{k}={v}" for k, v in sorted(out.op_counts.items())),
        })
        row.update({f"t_{k}": v for k, v in out.stage_seconds.items()})
        row.update({f"channels:{g}": after for g, (_, after) in out.kept.items()})
    row["error"] = error
    row.update(params)
    return row


class _EarlyStop(Exception):
    def __init__(self, out: StoppedEarly) -> None:
        super().__init__("stopped early")
        self.out = out


class _Interrupt:
    """First Ctrl-C: stop scheduling, let running trials finish, write the report. Second: stop now."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.count = 0
        self.log = log
        self._old = None

    def __enter__(self) -> "_Interrupt":
        import signal

        def handler(signum, frame):
            self.count += 1
            if self.count >= 2:
                raise KeyboardInterrupt
            self.log("Ctrl-C: no new trials; waiting for the running ones (Ctrl-C again to stop now, resumable)")

        try:
            self._old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave signals alone
            self._old = None
        return self

    def __exit__(self, *a) -> None:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)

    @property
    def stopping(self) -> bool:
        return self.count >= 1


def _lock(rd: RunDir):
    """Hold an exclusive lock on the run directory for the life of the returned file object."""
    import fcntl

    f = open(rd.path / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunError(f"run directory {str(rd.path)!r} is in use by another search ({holder}); wait for it to finish or choose another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f


def _load_rows(rd: RunDir) -> dict[int, dict]:
    rows = {}
    for path in sorted((rd.path / "trials").glob("*.json")):
        row = json.loads(path.read_text())
        rows[int(row["trial"])] = row
    return rows


def run_search(prep: Prepared, *, progress: bool = True, log: Callable[[str], None] = print) -> SearchResult:
    import optuna
    import ray
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    from autocompress.measure.cache import LatencyCache, graph_hash
    from autocompress.tasks.baseline import cache_dir

    cfg = prep.config
    t_start = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    splits = prep.splits
    input_shape = tuple(splits.input_shape)
    space = prep.space
    params_def = space.params()

    _init_ray(cfg.ray_address)  # before anything is written: a cluster that cannot be joined leaves no run directory
    _check_device(cfg.device)
    rd = RunDir(prep.run_dir)
    rd.path.mkdir(parents=True, exist_ok=True)
    lock = _lock(rd)
    try:
        log(f"baseline: {cfg.model} on {cfg.dataset} ({splits.sizes()})")
        base_settings = TrainSettings(**cfg.baseline.model_dump())
        baseline, binfo = get_baseline(model_name=cfg.model, splits=splits, settings=base_settings, seed=cfg.seed,
                                       weights=cfg.weights,
                                       on_epoch=lambda e, l: log(f"  baseline epoch {e + 1}/{base_settings.epochs:g}: loss {l:.3f}") if progress else None)
        how = ("loaded from --weights" if binfo.get("from_weights") else "loaded from cache" if binfo["cached"]
               else f"trained in {binfo['train_seconds']} s")
        log(f"  baseline {how} ({binfo['path']})")

        if prep.resume:
            meta = rd.read_json(rd.meta)
            meta.update(status="running", resumed=meta.get("resumed", 0) + 1, budget=str(cfg.budget))
        else:
            rd.write_json(rd.config, cfg.dump())
            meta = {
                "run_name": prep.run_name, "started": dt.datetime.now().isoformat(timespec="seconds"), "status": "running",
                "model": cfg.model, "dataset": cfg.dataset, "input_shape": list(input_shape), "splits": splits.sizes(),
                "space": space.describe(), "excluded_layers": space.excluded, "budget": str(cfg.budget),
                "latency_settings": cfg.latency.model_dump(), "spent_seconds": 0.0,
                "objectives": ["val_accuracy (max)", "latency_ms (min)", "size_bytes (min)"],
            }
        meta["baseline"] = binfo
        total_cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        threads = max(1, total_cpus // cfg.concurrency)
        device, fp = _place_device(cfg.device, cfg.latency.model_dump())
        meta["device"] = {**fp, "name": cfg.device}
        meta["quant_format"] = quant_format_for(meta["device"])  # chosen for the device that runs the model
        reduce_range = bool(meta["quant_format"]["reduce_range"])
        meta["ray"] = {"address": cfg.ray_address or "local", "cpus": total_cpus, "threads_per_trial": threads,
                       "concurrency": cfg.concurrency}
        rd.write_json(rd.meta, meta)
        lat_cache = LatencyCache(cache_dir(), meta["device"], cfg.latency.model_dump()) if cfg.latency_cache else None

        base_ref = ray.put(baseline)
        splits_ref = ray.put(splits)
        remote_trial = ray.remote(autocompress_trial).options(num_cpus=threads, max_retries=0)
        ft = TrainSettings(**cfg.finetune.model_dump())

        def spec_for(params: dict, finetune: TrainSettings | None) -> TrialSpec:
            ratios, precisions = space.decode(params)
            return TrialSpec(ratios, precisions, finetune, space.round_to, space.min_channels, cfg.seed, reduce_range, stop_below)

        def choices(params: dict) -> dict:
            """Every group's ratio and layer's precision, the fixed ones included (for the table)."""
            ratios, precisions = space.decode(params)
            return {**{f"prune:{g}": r for g, r in ratios.items()}, **{f"quant:{l}": p for l, p in precisions.items()}}

        def cached_latency(out: TrialOutput) -> dict | None:
            """The latency of an identical graph measured earlier on this device with the same settings."""
            ghash = graph_hash(out.onnx_bytes)
            hit = lat_cache.get(ghash) if lat_cache else None
            return None if hit is None else {**hit, "source": f"cache:{ghash[:12]}"}

        def measured(out: TrialOutput, lat: dict) -> dict:
            if lat_cache and not lat.get("contended"):  # a figure spoilt by outside load is not made permanent
                lat_cache.put(graph_hash(out.onnx_bytes), lat)
            return {**lat, "source": "measured"}

        def complete(trial, params: dict, out: TrialOutput, lat: dict, seconds: float) -> dict:
            """The row of a trial with its latency; the shipped file is written first."""
            path = rd.model_path(f"trial-{trial.number:04d}")
            atomic_write_bytes(path, out.onnx_bytes)
            return _row(trial.number, "COMPLETE", choices(params), out, lat, str(path.relative_to(rd.path)), seconds)

        def latency_of(out: TrialOutput) -> dict:
            """Measured by the device (waiting for it), or taken from the cache."""
            return cached_latency(out) or measured(out, ray.get(device.measure.remote(out.onnx_bytes, input_shape)))

        # ---- baselines (BASELINES), measured like every trial
        baselines: dict[str, dict] = rd.read_json(rd.baselines_json) if (prep.resume and rd.baselines_json.is_file()) else {}
        all_groups = [g.name for g in space.groups]
        # built concurrently like trials (up to `concurrency` at once), measured one at a time by the device in order
        pending = [b for b in BASELINES if b[0] in cfg.baselines and b[0] not in baselines]
        inflight: list[tuple[str, TrialSpec, float, ray.ObjectRef]] = []
        while pending or inflight:
            while pending and len(inflight) < cfg.concurrency:
                name, ratio, prec, tuned = pending.pop(0)
                log(f"baseline {name}: {'prune, fine-tune, ' if ratio else ''}export, quantize, measure")
                spec = TrialSpec({g: ratio for g in all_groups} if ratio else {}, {l.name: prec for l in space.layers},
                                 ft if tuned else None, space.round_to, space.min_channels, cfg.seed, reduce_range)
                inflight.append((name, spec, time.perf_counter(), remote_trial.remote(base_ref, splits_ref, spec, threads)))
            name, spec, t0, ref = inflight.pop(0)
            try:
                out = ray.get(ref)
                lat = latency_of(out)
            except Exception as e:  # noqa: BLE001 - a reference that cannot be built is reported, not fatal
                if name == "fp32":
                    raise
                log(f"  baseline {name} failed: {_describe_error(e)}")
                baselines[name] = _row(-1, "FAIL", {}, None, None, None, time.perf_counter() - t0,
                                       error=_describe_error(e), kind=f"baseline-{name}")
                continue
            path = rd.model_path(f"baseline-{name}")
            atomic_write_bytes(path, out.onnx_bytes)
            baselines[name] = _row(-1, "COMPLETE", {f"prune:{g}": r for g, r in spec.ratios.items()}, out, lat,
                                   str(path.relative_to(rd.path)), time.perf_counter() - t0, kind=f"baseline-{name}")
            baselines[name]["model_key"] = _model_key(space, spec.ratios, spec.precisions)
        baselines = {name: baselines[name] for name, *_ in BASELINES if name in baselines}  # the table's order
        rd.write_json(rd.baselines_json, baselines)
        fp32_ms = baselines["fp32"]["latency_ms"]
        stop_below = baselines["fp32"]["val_accuracy"] - cfg.early_stop_points if cfg.early_stop_points > 0 else None

        # ---- sensitivity scan (cached per baseline, space, data and format): narrows the space, warm-starts the sampler
        warm: list[dict] = []
        if cfg.sensitivity and params_def and cfg.sampler != "grid":
            from autocompress.search.sensitivity import cache_key, cached_scan, narrow, warm_configs

            key = cache_key(baseline, space, splits.val_x, reduce_range)
            t0 = time.perf_counter()

            def compute() -> dict:
                log("sensitivity scan: each group pruned alone, each layer quantized alone (no fine-tune, validation split)")
                return ray.get(ray.remote(_scan_task).options(num_cpus=threads, max_retries=0).remote(
                    base_ref, splits_ref, space, reduce_range, threads))

            sens, cached = cached_scan(cache_dir(), key, compute)
            removed = narrow(space, sens)  # deterministic: a resumed run narrows the same way
            warm = warm_configs(space, sens)
            params_def = space.params()
            meta["sensitivity"] = {"cache_key": key, "cached": cached, "seconds": round(time.perf_counter() - t0, 1),
                                   "base_val_accuracy": sens["base"], "narrowed": removed, "warm_configs": len(warm)}
            if not prep.resume:
                meta["space"] = space.describe()
            rd.write_json(rd.meta, meta)
            how = "from cache" if cached else f"scanned in {meta['sensitivity']['seconds']} s"
            log(f"  sensitivity {how}: {sum(len(v) for v in removed.values())} hopeless choices removed, "
                f"{len(warm)} warm-start configurations")

        # ---- `--sampler grid`: the uniform settings (every ratio of the space for all groups x fp32 / int8 for all
        # layers), each distinct model once, and nothing else
        grid: list[dict] = []
        if cfg.sampler == "grid":
            keys: set[str] = set()
            ratios = sorted({r for g in space.groups for r in g.ratios} or {0.0})
            for prec in ("fp32", "int8"):
                for r in ratios:
                    params = space.uniform(r, prec)
                    key = _model_key(space, *space.decode(params))
                    if key not in keys:
                        keys.add(key)
                        grid.append(params)
            meta["grid_size"] = len(grid)

        # ---- the study: created, or replayed from its journal on --resume
        # A resumed sampler gets a new (still deterministic) seed: with the first one it would propose the
        # configurations of the first session's opening trials all over again.
        seed = cfg.seed + 7919 * int(meta.get("resumed", 0))
        sampler = {
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5 if cfg.warm_start else 10),
            "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "grid": lambda: optuna.samplers.RandomSampler(seed=seed),  # never consulted: every trial is enqueued
        }[cfg.sampler]()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = JournalStorage(JournalFileBackend(str(rd.journal)))
        rows = _load_rows(rd) if prep.resume else {}
        # a run killed before its first trial (during the baselines or the scan) has no study yet: it starts one
        if prep.resume and prep.run_name in optuna.get_all_study_names(storage):
            study = optuna.load_study(study_name=meta["run_name"], storage=storage, sampler=sampler)
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                row = rows.get(t.number)
                if row is not None and row["state"] in ("COMPLETE", "DUPLICATE"):  # killed between writing its row and telling
                    study.tell(t.number, [row["val_accuracy"], row["latency_ms"], row["size_bytes"]])
                elif row is not None:
                    study.tell(t.number, state=TrialState.PRUNED if row["state"] == "STOPPED" else TrialState.FAIL)
                else:  # interrupted mid-trial: recorded as such (not counted in the budget), and run again
                    storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                    study.tell(t.number, state=TrialState.FAIL)
                    rows[t.number] = {"trial": t.number, "kind": "search", "state": "INTERRUPTED",
                                      "error": "interrupted (the search was killed); its configuration runs again", **choices(t.params)}
                    rd.write_json(rd.path / "trials" / f"{t.number:04d}.json", rows[t.number])
                    study.enqueue_trial(dict(t.params), skip_if_exists=False)
                    log(f"trial {t.number} was interrupted: recorded as failed (interrupted) and queued to run again")
        else:
            study = optuna.create_study(study_name=prep.run_name, storage=storage, sampler=sampler,
                                        directions=["maximize", "minimize", "minimize"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(["val_accuracy", "latency_ms", "size_bytes"])
            if cfg.sampler == "grid":
                for params in grid:
                    study.enqueue_trial(params, skip_if_exists=True)
            elif cfg.warm_start and params_def:
                for params in warm_start_configs(space, warm, cfg.budget.trials):
                    study.enqueue_trial(params, skip_if_exists=True)
        distributions = {k: optuna.distributions.CategoricalDistribution(v) for k, v in params_def.items()}

        running: dict = {}  # ObjectRef -> (optuna trial, params, start time)
        # A finished trial's latency is measured while the next trial already fine-tunes: the device pauses that
        # trial only within its sessions, so a measurement costs the search its sessions' time, not its wall time.
        measuring: dict = {}  # device ObjectRef -> (optuna trial, params, TrialOutput, trial seconds, submit time)
        in_flight: dict[str, int] = {}  # model key -> the trial running or being measured for it
        waiting: dict[str, list] = {}  # model key -> proposals of that model made while it was in flight
        to_run: list[tuple] = []  # (trial, params, key): such a proposal whose model failed, to run on its own
        # identical configurations are not run twice: a repeat gets the earlier result (not counted in the budget)
        seen: dict[str, int | str] = {}  # model key -> trial number, or the name of a baseline
        for name, _, _, _ in BASELINES:
            if baselines.get(name, {}).get("state") == "COMPLETE" and "model_key" in baselines[name]:
                seen[baselines[name]["model_key"]] = name
        for n, r in sorted(rows.items()):
            if r["state"] == "COMPLETE" and not r.get("reused"):
                seen.setdefault(_model_key(space, *space.decode({k: v for k, v in r.items() if k.startswith(("prune:", "quant:"))})), n)
        repeats_in_a_row = 0
        # What the sampler knows when it proposes a trial must not depend on timing (same seed, same proposals):
        # the study hears of a result only once `concurrency` later trials have been asked for, whenever the result
        # came. With one trial at a time this is a lag of one trial, the one that runs while the previous is measured.
        asked: list = []  # optuna trials in the order they were asked for
        untold: dict[int, tuple] = {}  # trial number -> (optuna trial, row) of finished trials the study has not heard of

        def tell(number: int) -> None:
            trial, row = untold.pop(number)
            if row["state"] in ("COMPLETE", "DUPLICATE"):
                study.tell(trial, [row["val_accuracy"], row["latency_ms"], row["size_bytes"]])
            else:
                study.tell(trial, state=TrialState.PRUNED if row["state"] == "STOPPED" else TrialState.FAIL)

        def tell_up_to(k: int) -> bool:
            """Tell the study the results of the first `k` trials asked for; False if one has not finished (no row)."""
            first = asked[:max(0, k)]
            if any(t.number not in rows for t in first):
                return False
            for t in first:
                if t.number in untold:
                    tell(t.number)
            return True
        done = sum(r["state"] == "COMPLETE" for r in rows.values())
        failed = sum(r["state"] == "FAIL" for r in rows.values())  # interrupted trials do not count
        stopped = sum(r["state"] == "STOPPED" for r in rows.values())
        spent_before = float(meta.get("spent_seconds", 0.0)) if prep.resume else 0.0
        t_search = time.perf_counter()
        deadline = t_search + max(0.0, cfg.budget.seconds - spent_before) if cfg.budget.seconds else None

        def save_table() -> None:
            rd.write_table([rows[k] for k in sorted(rows)])
            meta["spent_seconds"] = round(spent_before + time.perf_counter() - t_search, 1)
            rd.write_json(rd.meta, meta)

        def best_text() -> str:
            ok = [r for r in rows.values() if r["state"] == "COMPLETE"]
            if not ok:
                return ""
            near = [r for r in ok if r["val_accuracy"] >= baselines["fp32"]["val_accuracy"] - 1.0]
            b = min(near or ok, key=lambda r: r["latency_ms"])
            return f"best within 1pt: {b['val_accuracy']:.1f}% @ {b['latency_ms']:.3f} ms ({fp32_ms / b['latency_ms']:.2f}x)"

        if rows:
            save_table()
        with _Interrupt(log) as interrupt, _Progress(cfg.budget.trials, cfg.budget.seconds, progress, log) as bar:
            def can_start() -> bool:
                if interrupt.stopping:
                    return False
                if repeats_in_a_row >= MAX_REPEATS:
                    return False
                started = len(running) + len(measuring) + len(to_run) + sum(len(w) for w in waiting.values())
                if cfg.sampler == "grid" and done + failed + stopped + started >= len(grid):
                    return False
                if cfg.budget.trials is not None:
                    return done + failed + stopped + started < cfg.budget.trials
                return time.perf_counter() < (deadline or 0)

            def count_repeat() -> None:
                nonlocal repeats_in_a_row
                repeats_in_a_row += 1
                if repeats_in_a_row == MAX_REPEATS:
                    log(f"the sampler proposed {MAX_REPEATS} already-measured configurations in a row: the space looks "
                        "exhausted; stopping (widen it in the search-space YAML)")

            def record_copy(trial, of: int, state: str = "DUPLICATE") -> None:
                """A repeat of trial `of`'s model takes its outcome at no cost: its result (DUPLICATE, not counted in
                the budget), or its early stop (STOPPED: same model, same seed, stopped at the same point)."""
                error = f"{rows[of]['error']} (the model of trial {of})" if state == "STOPPED" else ""
                row = {**rows[of], "trial": trial.number, "state": state, "duration_s": 0.0, "duplicate_of": of, "error": error}
                row.update({k: 0.0 for k in row if k.startswith("t_")})
                rd.write_json(rd.path / "trials" / f"{trial.number:04d}.json", row)
                untold[trial.number] = (trial, row)
                rows[trial.number] = row

            def submit(trial, params: dict, key: str) -> None:
                ref = remote_trial.remote(base_ref, splits_ref, spec_for(params, ft), threads)
                running[ref] = (trial, params, time.perf_counter())
                in_flight[key] = trial.number

            try:
                while running or measuring or to_run or can_start():
                    if interrupt.stopping:  # no new runs: these stay unfinished in the journal and run on --resume
                        to_run.clear()
                    while to_run and len(running) < cfg.concurrency:
                        submit(*to_run.pop(0))
                    while can_start() and len(running) < cfg.concurrency and tell_up_to(len(asked) - cfg.concurrency):
                        trial = study.ask(distributions)
                        asked.append(trial)
                        params = dict(trial.params)
                        key = _model_key(space, *space.decode(params))
                        if key in seen and isinstance(seen[key], str):  # a baseline built this model: a free trial
                            src = baselines[seen[key]]
                            row = {**{k: v for k, v in src.items() if not k.startswith(("prune:", "quant:", "model_key"))},
                                   **choices(params), "trial": trial.number, "kind": "search", "state": "COMPLETE",
                                   "duration_s": 0.0, "reused": f"baseline-{seen[key]}", "error": ""}
                            row.update({k: 0.0 for k in row if k.startswith("t_")})
                            rd.write_json(rd.path / "trials" / f"{trial.number:04d}.json", row)
                            untold[trial.number] = (trial, row)
                            rows[trial.number] = row
                            done += 1
                            bar.trial_line(f"trial {trial.number}: the model of baseline {seen[key]}: its result reused")
                            continue
                        if key in seen:
                            record_copy(trial, seen[key])
                            count_repeat()
                            continue
                        if key in in_flight:  # the same model is running or being measured: it takes that result
                            waiting.setdefault(key, []).append((trial, params))
                            count_repeat()
                            continue
                        repeats_in_a_row = 0
                        submit(trial, params, key)
                    ready, _ = ray.wait(list(running) + list(measuring), num_returns=1, timeout=1.0)
                    now = time.perf_counter()
                    results: list[tuple] = []  # (optuna trial, params, row)
                    for mref in [r for r in measuring if r in ready or now - measuring[r][4] > cfg.trial_timeout_s]:
                        trial, params, out, seconds, t_submit = measuring.pop(mref)
                        try:
                            if mref not in ready:
                                raise TimeoutError(f"no figure from the device within the per-trial timeout of {cfg.trial_timeout_s:g} s")
                            lat = measured(out, ray.get(mref))
                            out.stage_seconds["measure"] = round(now - t_submit, 3)
                            results.append((trial, params, complete(trial, params, out, lat, seconds)))
                        except Exception as e:  # noqa: BLE001 - a failing measurement fails its trial, not the search
                            results.append((trial, params, _row(trial.number, "FAIL", choices(params), None, None, None, seconds,
                                                                 error=f"latency measurement failed: {_describe_error(e)}")))
                    for ref in list(running):
                        trial, params, t0 = running[ref]
                        if ref not in ready and now - t0 <= cfg.trial_timeout_s:
                            continue
                        del running[ref]
                        try:
                            if ref not in ready:
                                ray.cancel(ref, force=True)
                                raise TimeoutError(f"trial exceeded the per-trial timeout of {cfg.trial_timeout_s:g} s")
                            out: TrialOutput | StoppedEarly = ray.get(ref)
                            if isinstance(out, StoppedEarly):
                                raise _EarlyStop(out)
                            lat = cached_latency(out)
                            if lat is None:  # measured in the background; the row is written when the figure arrives
                                measuring[device.measure.remote(out.onnx_bytes, input_shape)] = (trial, params, out, now - t0, now)
                                continue
                            out.stage_seconds["measure"] = 0.0
                            row = complete(trial, params, out, lat, now - t0)
                        except _EarlyStop as e:
                            row = _row(trial.number, "STOPPED", choices(params), None, None, None, now - t0,
                                       error=f"stopped early: {e.out.val_accuracy:.2f}% validation accuracy (PyTorch) after "
                                             f"{e.out.epochs_done} fine-tune epoch(s), below {e.out.threshold:.2f}% (FP32 - {cfg.early_stop_points:g} points)")
                            row.update({f"t_{k}": v for k, v in e.out.stage_seconds.items()})
                        except Exception as e:  # noqa: BLE001 - a failing trial never takes the search down
                            row = _row(trial.number, "FAIL", choices(params), None, None, None, now - t0, error=_describe_error(e))
                        results.append((trial, params, row))
                    for trial, params, row in results:
                        key = _model_key(space, *space.decode(params))
                        if in_flight.get(key) == trial.number:
                            del in_flight[key]
                        # the row is on disk before the study hears of it: a kill in between is repaired on resume
                        rd.write_json(rd.path / "trials" / f"{trial.number:04d}.json", row)
                        untold[trial.number] = (trial, row)
                        if row["state"] == "COMPLETE":
                            seen.setdefault(key, trial.number)
                            done += 1
                        elif row["state"] == "STOPPED":
                            stopped += 1
                        else:
                            failed += 1
                        rows[trial.number] = row
                        save_table()
                        elapsed = spent_before + time.perf_counter() - t_search
                        if row["state"] == "COMPLETE":
                            bar.trial_line(f"trial {trial.number}: val {row['val_accuracy']:.2f}%  {row['latency_ms']:.3f} ms "
                                           f"({fp32_ms / row['latency_ms']:.2f}x)  {row['size_bytes'] / 1e6:.3f} MB  "
                                           f"[{done} done, {failed} failed, {elapsed:.0f} s]")
                        else:
                            bar.trial_line(f"trial {trial.number}: {'FAILED' if row['state'] == 'FAIL' else 'STOPPED'}: {row['error']}  "
                                           f"[{done} done, {failed} failed, {elapsed:.0f} s]")
                        # proposals of this model made while it was in flight: its result, or (if it failed) a run of their own
                        waiters = waiting.pop(key, [])
                        if row["state"] in ("COMPLETE", "STOPPED"):
                            for w_trial, _ in waiters:
                                record_copy(w_trial, trial.number, "DUPLICATE" if row["state"] == "COMPLETE" else "STOPPED")
                            if row["state"] == "STOPPED":
                                stopped += len(waiters)
                        elif waiters:  # the first runs when a slot is free; the others wait for it
                            to_run.append((*waiters[0], key))
                            in_flight[key] = waiters[0][0].number
                            if waiters[1:]:
                                waiting[key] = waiters[1:]
                    if results:
                        save_table()
                    bar.update(done=done, failed=failed, elapsed=spent_before + time.perf_counter() - t_search, best=best_text())
            except KeyboardInterrupt:
                for ref in running:
                    ray.cancel(ref, force=True)
                for number in sorted(untold):  # finished: the journal records them (running ones are repaired on resume)
                    tell(number)
                meta.update(status="interrupted")
                save_table()
                raise Interrupted(f"interrupted with {len(running) + len(measuring)} trial(s) running; continue with: autocompress search --resume {rd.path}") from None

            for number in sorted(untold):  # the study hears of the last results (a trial left unrun by Ctrl-C stays RUNNING)
                tell(number)
            if cfg.confirm_rounds and not interrupt.stopping:
                _confirm(rd, cfg, interrupt, bar.trial_line, rows, baselines, device, input_shape, lat_cache, save_table)
        exhausted = repeats_in_a_row >= MAX_REPEATS
        finished = (cfg.budget.trials is None or done + failed + stopped >= cfg.budget.trials or exhausted
                    or (cfg.sampler == "grid" and done + failed + stopped >= len(grid)))
        meta.update(status="complete" if finished and not interrupt.stopping else "stopped",
                    finished=dt.datetime.now().isoformat(timespec="seconds"),
                    wall_seconds=round(time.perf_counter() - t_start, 1), trials_complete=done, trials_failed=failed,
                    trials_repeated=sum(r["state"] == "DUPLICATE" for r in rows.values()), trials_stopped_early=stopped,
                    space_exhausted=exhausted)
        save_table()
        from autocompress.report import write_report

        report = write_report(rd)
        table = rd.read_table()
        return SearchResult(rd.path, table, pareto_front(table), baselines, report)
    finally:
        lock.close()


class _ConfirmStopped(Exception):
    pass


def _confirm(rd: RunDir, cfg: SearchConfig, interrupt, log, rows: dict, baselines: dict, device, input_shape,
             lat_cache, save_table) -> None:
    """The end-of-search re-measurement (autocompress/search/confirm.py), wired to the device, the latency cache and
    the run directory. Ctrl-C or a failing measurement skips it and keeps the search-time figures."""
    import ray

    from autocompress.measure.cache import graph_hash
    from autocompress.search.confirm import confirm_latencies

    def measure(data: bytes) -> dict:
        if interrupt.stopping:
            raise _ConfirmStopped
        return ray.get(device.measure.remote(data, input_shape))

    try:
        chosen = confirm_latencies(rows, baselines, rd.path, measure, cfg.confirm_rounds, log)
    except _ConfirmStopped:
        log("latency confirmation skipped (Ctrl-C): the report shows the figures measured during the search")
        return
    except Exception as e:  # noqa: BLE001 - the search's own figures stand
        log(f"latency confirmation failed ({_describe_error(e)}): the report shows the figures measured during the search")
        return
    for f, lat in chosen.items():
        if lat_cache and not lat.get("contended"):
            lat_cache.put(graph_hash((rd.path / f).read_bytes()), lat)
    for n, row in rows.items():
        if row.get("onnx") in chosen and row.get("latency_ms") is not None:
            rd.write_json(rd.path / "trials" / f"{n:04d}.json", row)
    rd.write_json(rd.baselines_json, baselines)
    save_table()


def autocompress_trial(baseline: torch.nn.Module, splits: Splits, spec: TrialSpec, threads: int) -> TrialOutput:
    """Runs in a Ray worker; the device finds (and pauses) running trials by this function's name."""
    return run_pipeline(baseline, splits, spec, threads=threads)


def _scan_task(baseline: torch.nn.Module, splits: Splits, space: SearchSpace, reduce_range: bool, threads: int) -> dict:
    """Runs in a Ray worker."""
    from autocompress.search.sensitivity import scan

    return scan(baseline, splits, space, reduce_range=reduce_range, threads=threads)


def search(config: SearchConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> SearchResult:
    """Library entry point: validate, then run. Raises AutocompressError on bad input (nothing written)."""
    return run_search(prepare(config), progress=progress, log=log)


from autocompress.search.device import Device  # noqa: E402  (ray.remote class; import after helpers)
