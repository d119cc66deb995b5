"""A whole search: baseline -> baselines -> sensitivity scan -> study -> trials -> confirm -> report.

`run_search` is a short sequence of named steps on a `Prepared` search (engine/prepare.py has checked the input);
the trial loop itself is the `Scheduler`'s.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch

from autocompress.config import SearchConfig
from autocompress.cpus import FreeCpus, free_cpus, torch_threads, usable_cpus
from autocompress.engine.baselines import baseline_spec, run_baselines
from autocompress.engine.fp32 import fp32_baseline
from autocompress.engine.latency import setup_predictor
from autocompress.engine.policies import WarmStart, policies_for
from autocompress.engine.prepare import Prepared
from autocompress.engine.progress import Interrupt, Progress, exit_code, sigterm_interrupts
from autocompress.engine.scheduler import Limits, Scheduler
from autocompress.engine.state import LatencyBook, RunState, refuse_if_locked, run_lock
from autocompress.engine.study import distributions, grid_configs, make_sampler, open_study, warm_start_configs
from autocompress.errors import Interrupted, describe_error
from autocompress.pipeline.quantize import quant_format_for
from autocompress.pipeline.trial import TrialSpec
from autocompress.results.records import TrialState
from autocompress.results.rundir import RunDir
from autocompress.runtime import cluster
from autocompress.runtime.executor import Executor, RayExecutor

__all__ = ["run_search"]


def run_search(prep: Prepared, *, progress: bool = True, log: Callable[[str], None] = print) -> RunDir:
    """Run the prepared search to its end (budget, exhaustion or Ctrl-C); returns its run directory, whose report
    the caller writes. Ctrl-C (a second one in the trial loop) or SIGTERM in any stage marks the run interrupted
    and raises Interrupted naming the stage; `--resume` goes on from there."""
    refuse_if_locked(RunDir(prep.run_dir))
    cpus = _cpus(prep)
    # before anything is written: a cluster that cannot be joined leaves no run directory
    # (SIGTERM's handler after Ray's start: Ray installs one of its own that ends the process)
    with (torch_threads(cpus.free), cluster.ray_session(prep.config.ray_address, log, num_cpus=cpus.free),
          sigterm_interrupts()):
        cluster.check_device(prep.config.device)
        rd = RunDir(prep.run_dir)
        rd.path.mkdir(parents=True, exist_ok=True)
        with run_lock(rd):
            state = _open_state(prep, rd)
            state.meta["cpus"] = asdict(cpus)  # what the threads per trial were sized from
            if cpus.note():  # said once the directory is this search's: a refused search says only why
                log(f"  {cpus.note()}")
            at = _Stage()
            try:
                _stages(prep, state, at, progress, log)
            except KeyboardInterrupt as e:
                state.meta.update(status="interrupted", interrupted_in=at.name)
                state.save()
                raise Interrupted(f"interrupted during {at.name}; continue with: autocompress search --resume "
                                  f"{rd.path}", exit_code=exit_code(e)) from None
            return rd


def _cpus(prep: Prepared) -> FreeCpus:
    """The CPUs a local search runs on: the usable ones other processes leave free (a cluster's are its own)."""
    if prep.config.ray_address:
        n = usable_cpus()
        return FreeCpus(n, None, n)
    return free_cpus()


@dataclass
class _Stage:
    name: str = "the FP32 baseline"  # the stage the search is in: what an interrupt names


def _stages(prep: Prepared, state: RunState, at: _Stage, progress: bool, log: Callable[[str], None]) -> None:
    """baseline -> uniform baselines -> latency model -> scan -> study -> trials -> confirmation."""
    cfg, t_start = prep.config, time.perf_counter()
    baseline = fp32_baseline(prep, log, progress)
    _note_baseline(state, baseline.info, baseline.warning)
    at.name = "the uniform baselines"
    executor, reduce_range, train_device = _start_device(prep, state, baseline.model)
    _speed_hint(prep, train_device, log)
    latency = _latency_book(cfg, state)
    run_baselines(cfg.baselines, state=state, executor=executor, space=prep.space, latency=latency,
                  make_spec=lambda b: baseline_spec(b, prep.space, cfg.finetune, cfg.seed, reduce_range,
                                                    train_device=train_device),
                  concurrency=cfg.concurrency, log=log)
    # each step narrows the space it is given into a new one: the latency model drops the channel counts that are
    # slow on this device, then the scan ranks what is left and drops hopeless precisions
    at.name = "the latency model's layer table"
    space, predictor = setup_predictor(prep, state, executor, baseline.model, reduce_range, log, latency=latency)
    prep = replace(prep, space=space)
    at.name = "the sensitivity scan"
    prep, predictor, warm = _guarded_sensitivity(prep, state, executor, baseline.model, reduce_range, predictor, log)
    make_spec = _spec_maker(prep, reduce_range, train_device)
    at.name = "the funnel"
    promoted = _guarded_funnel(prep, state, executor, predictor, warm, reduce_range, make_spec, log, progress)
    at.name = "the trials"
    study, limits = _study(prep, state, warm, promoted, log)
    with Interrupt(log) as interrupt, Progress(cfg.budget.trials, cfg.budget.seconds, progress, log) as bar:
        scheduler = _scheduler(prep, state, executor, latency, make_spec, study, limits, predictor, bar.trial_line)
        _run_trials(scheduler, state, interrupt, bar)
        if cfg.confirm_rounds and not interrupt.stopping:
            _confirm(state, cfg, interrupt, bar.trial_line, executor, latency)
    _finish(state, scheduler, cfg, interrupt.stopping, time.perf_counter() - t_start)


def _open_state(prep: Prepared, rd: RunDir) -> RunState:
    """The run's state, on disk before the first stage (a run interrupted in any stage can be resumed): a new
    run's config.json and meta.json, or a resumed run's, marked running again."""
    cfg, splits = prep.config, prep.splits
    if prep.resume:
        meta = rd.read_json(rd.meta)
        meta.update(status="running", resumed=meta.get("resumed", 0) + 1, budget=str(cfg.budget))
        state = RunState(rd, meta, RunState.load_records(rd), spent_before=float(meta.get("spent_seconds", 0.0)))
        if rd.baselines_json.is_file():
            from autocompress.results.records import TrialRecord

            state.baselines = {k: TrialRecord.from_row(v) for k, v in rd.read_json(rd.baselines_json).items()}
    else:
        rd.write_json(rd.config, cfg.dump())
        meta = {
            "run_name": prep.run_name, "started": dt.datetime.now().isoformat(timespec="seconds"), "status": "running",
            "model": cfg.model, "dataset": cfg.dataset, "input_shape": list(splits.input_shape),
            "splits": splits.sizes(), "space": prep.space.describe(), "excluded_layers": prep.space.excluded,
            "pruning_limits": prep.space.pruning_limits,
            "budget": str(cfg.budget), "latency_settings": cfg.latency.model_dump(), "spent_seconds": 0.0,
            "objectives": ["val_accuracy (max)", "latency_ms (min)", "size_bytes (min)"],
        }
        state = RunState(rd, meta)
    # A resumed run states the rule of the data it goes on with.
    state.meta.update(split_rule=splits.rule, augment=splits.augment,
                      preprocessing=splits.preprocessing.as_dict() if splits.preprocessing else None)
    state.meta.pop("interrupted_in", None)
    state.rd.write_json(state.rd.meta, state.meta)
    return state


def _note_baseline(state: RunState, info: dict, split_warning: str) -> None:
    """meta.json's baseline, and the warning of the data the run goes on with (a resumed run's own)."""
    state.meta["baseline"] = info
    state.meta.pop("split_warning", None)
    if split_warning:
        state.meta["split_warning"] = split_warning
    state.rd.write_json(state.rd.meta, state.meta)


def _start_device(prep: Prepared, state: RunState, baseline: torch.nn.Module):
    """The measuring actor and the trial executor; the quantization format chosen for the device's CPU; where
    trials fine-tune (a GPU when the cluster has one and the config allows it)."""
    import ray

    from autocompress.pipeline.devices import resolve_train_device, trial_resources

    cfg = prep.config
    total_cpus = int(ray.cluster_resources().get("CPU", usable_cpus()))
    threads = max(1, total_cpus // cfg.concurrency)
    device, fp = cluster.place_device(cfg.device, cfg.latency.model_dump())
    state.meta["device"] = {**fp, "name": cfg.device}
    state.meta["quant_format"] = quant_format_for(state.meta["device"])
    train_device = resolve_train_device(cfg.train_device, ray.cluster_resources().get("GPU", 0))
    resources = trial_resources(train_device, threads, cfg.gpus_per_trial)
    state.meta["ray"] = {"address": cfg.ray_address or "local", "cpus": total_cpus, "threads_per_trial": threads,
                         "concurrency": cfg.concurrency, "train_device": train_device,
                         "gpus_per_trial": resources["num_gpus"]}
    state.rd.write_json(state.rd.meta, state.meta)
    executor = RayExecutor(baseline, prep.splits, threads, device, tuple(prep.splits.input_shape), resources)
    return executor, bool(state.meta["quant_format"]["reduce_range"]), train_device


# Training images per epoch beyond which a CPU fine-tune is long enough for a search to point at the cap.
_LARGE_TRAIN = 10_000


def _speed_hint(prep: Prepared, train_device: str, log: Callable[[str], None]) -> None:
    n = len(prep.splits.train)
    if train_device == "cpu" and n > _LARGE_TRAIN and prep.config.max_images.get("train") is None:
        log(f"  each trial fine-tunes on all {n} training images on the CPU ({prep.config.finetune.epochs:g} "
            "epochs); for faster trials cap them, e.g. --max-images train=5000")


def _latency_book(cfg: SearchConfig, state: RunState) -> LatencyBook:
    from autocompress.measure.cache import LatencyCache, cache_dir

    cache = LatencyCache(cache_dir(), state.meta["device"], cfg.latency.model_dump()) if cfg.latency_cache else None
    return LatencyBook(cache)


def _spec_maker(prep: Prepared, reduce_range: bool, train_device: str) -> Callable[[dict, float | None], TrialSpec]:
    """(params, halfway bar or None) -> the trial's spec. With --multi-fidelity every trial checks its accuracy
    halfway, bar or not: later trials are held to it."""
    cfg, space = prep.config, prep.space

    def make_spec(params: dict, stop_below: float | None = None) -> TrialSpec:
        ratios, precisions = space.decode(params)
        return TrialSpec(ratios, precisions, cfg.finetune, space.round_to, space.min_channels, cfg.seed,
                         reduce_range, stop_below, check_halfway=cfg.multi_fidelity_points > 0,
                         train_device=train_device, criterion=space.criterion(params),
                         drop_blocks=space.dropped(params))

    return make_spec


def _guarded_sensitivity(prep: Prepared, state: RunState, executor: Executor, baseline: torch.nn.Module,
                         reduce_range: bool, predictor, log: Callable[[str], None]) -> tuple[Prepared, Any, list[dict]]:
    """`_sensitivity`, or (when it fails) the search as it was and no warm start: a failing scan step never takes
    the search down."""
    try:
        return _sensitivity(prep, state, executor, baseline, reduce_range, predictor, log)
    except Exception as e:  # noqa: BLE001 - the search runs without the scan's narrowing and warm start
        log(f"  sensitivity scan failed ({describe_error(e)}): the search goes on without it")
        state.meta["sensitivity"] = {"failed": describe_error(e)}
        state.rd.write_json(state.rd.meta, state.meta)
        return prep, predictor, []


def _sensitivity(prep: Prepared, state: RunState, executor: Executor, baseline: torch.nn.Module,
                 reduce_range: bool, predictor, log: Callable[[str], None]) -> tuple[Prepared, Any, list[dict]]:
    """Each group pruned alone, each layer quantized alone (cached): the search on the narrowed space (and the
    predictor reading it), and the warm start (`WarmStart`: configurations allocated with the latency model, when
    there is one, then the scan's own)."""
    cfg, space = prep.config, prep.space
    if not (cfg.sensitivity and space.params() and cfg.sampler != "grid"):
        return prep, predictor, []
    from autocompress.measure.cache import cache_dir
    from autocompress.space.sensitivity import cache_key, cached_scan, narrow

    key = cache_key(baseline, space, prep.splits, reduce_range)
    t0 = time.perf_counter()

    def compute() -> dict:
        log("sensitivity scan: each group pruned alone, each layer quantized alone (no fine-tune, validation split)")
        return executor.scan(space, reduce_range)

    sens, cached = cached_scan(cache_dir(), key, compute)
    space, removed = narrow(space, sens)  # deterministic: a resumed run narrows the same way
    predictor = predictor.with_space(space) if predictor is not None else None
    start = WarmStart(predictor, log)
    # (a resumed study has its warm start queued already, and the first session's allocation is the one reported;
    # these are queued only by a run killed before its study was made)
    allocated = start.allocate(space, sens)
    warm = start.configs(space, sens, allocated)
    first_allocated = state.meta.get("sensitivity", {}).get("allocated", []) if state.study_made else []
    state.meta["sensitivity"] = {"cache_key": key, "cached": cached, "seconds": round(time.perf_counter() - t0, 1),
                                 "base_val_accuracy": sens["base"], "narrowed": removed, "warm_configs": len(warm),
                                 "allocated": first_allocated or [asdict(a) for a in allocated]}
    if not state.study_made:
        state.meta["space"] = space.describe()
    state.rd.write_json(state.rd.meta, state.meta)
    how = "from cache" if cached else f"scanned in {state.meta['sensitivity']['seconds']} s"
    log(f"  sensitivity {how}: {sum(len(v) for v in removed.values())} hopeless choices removed, "
        f"{len(warm)} warm-start configurations ({len(allocated)} allocated with the latency model)")
    return replace(prep, space=space), predictor, warm


def _guarded_funnel(prep: Prepared, state: RunState, executor: Executor, predictor, warm: list[dict],
                    reduce_range: bool, make_spec: Callable[..., TrialSpec], log: Callable[[str], None],
                    progress: bool) -> list[dict]:
    """The funnel's promoted configurations (engine/funnel.py); none when it fails: the trials start from the warm
    start instead, and the search goes on."""
    from autocompress.engine.funnel import run_funnel

    if state.study_made:  # a resumed run whose trials have started: its first configurations are enqueued already
        return []
    try:
        return run_funnel(prep, state, executor, predictor, warm, reduce_range, make_spec, log, progress=progress)
    except Exception as e:  # noqa: BLE001 - the trials go on from the warm start
        log(f"  funnel failed ({describe_error(e)}): the trials start from the warm start")
        state.meta["funnel"] = {**(state.meta.get("funnel") or {}), "error": describe_error(e)}
        state.rd.write_json(state.rd.meta, state.meta)
        executor.close_scorers()
        return []


def _study(prep: Prepared, state: RunState, warm: list[dict], promoted: list[dict], log: Callable[[str], None]):
    """The run's Optuna study (its first configurations enqueued: the grid, or the funnel's promoted ones, or the
    warm start) and the loop's limits."""
    cfg, space = prep.config, prep.space
    grid = grid_configs(space) if cfg.sampler == "grid" else []
    if grid:
        state.meta["grid_size"] = len(grid)
    # A resumed sampler gets a new (still deterministic) seed: with the first one it would propose the
    # configurations of the first session's opening trials all over again.
    sampler = make_sampler(cfg.sampler, cfg.seed + 7919 * int(state.meta.get("resumed", 0)), cfg.warm_start)
    first = grid or (warm_start_configs(space, warm, cfg.budget.trials, promoted=promoted)
                     if (cfg.warm_start or promoted) and space.params() else [])
    study = open_study(state, run_name=prep.run_name, sampler=sampler, space=space, first=first, log=log)
    deadline = (state.t_search + max(0.0, cfg.budget.seconds - state.spent_before)) if cfg.budget.seconds else None
    limits = Limits(concurrency=cfg.concurrency, trials=cfg.budget.trials, deadline=deadline,
                    max_proposals=len(grid) if grid else None, trial_timeout_s=cfg.trial_timeout_s)
    return study, limits


def _scheduler(prep: Prepared, state: RunState, executor: Executor, latency: LatencyBook,
               make_spec: Callable[..., TrialSpec], study, limits: Limits, predictor,
               line: Callable[[str], None]) -> Scheduler:
    """The trial loop with the policies the config asks for (engine/policies.py)."""
    gates, fidelity = policies_for(prep.config, fp32_val=state.baselines["fp32"].objectives[0])
    return Scheduler(study, distributions(prep.space), prep.space, executor, state, limits, make_spec=make_spec,
                     latency=latency, line=line, predictor=predictor, gates=gates, fidelity=fidelity)


def _run_trials(scheduler: Scheduler, state: RunState, interrupt: Interrupt, bar: Progress) -> None:
    from autocompress.results.pareto import fastest_within

    def update() -> None:
        bar.update(done=state.count(TrialState.COMPLETE), failed=state.count(TrialState.FAIL),
                   elapsed=state.elapsed, best=_best_text(state, fastest_within))

    if state.records:
        state.save()
    try:
        scheduler.run(lambda: interrupt.stopping, on_update=update)
    except KeyboardInterrupt as e:
        state.meta.update(status="interrupted", interrupted_in="the trials")
        state.save()
        raise Interrupted(f"interrupted with {scheduler.busy} trial(s) running; continue with: "
                          f"autocompress search --resume {state.rd.path}", exit_code=exit_code(e)) from None


def _best_text(state: RunState, fastest_within) -> str:
    import pandas as pd

    done = [r.to_row() for r in state.records.values() if r.state is TrialState.COMPLETE]
    if not done:
        return ""
    fp32_acc, fp32_ms, _ = state.baselines["fp32"].objectives
    b = fastest_within(pd.DataFrame(done), fp32_acc, 1.0)
    if b is None:
        return ""
    return (f"best within 1pt: {b['val_accuracy']:.1f}% @ {b['latency_ms']:.3f} ms "
            f"({fp32_ms / b['latency_ms']:.2f}x)")


def _confirm(state: RunState, cfg: SearchConfig, interrupt: Interrupt, log: Callable[[str], None],
             executor: Executor, latency: LatencyBook) -> None:
    """The end-of-search re-measurement (engine/confirm.py). Ctrl-C or a failing measurement skips it and keeps the
    search-time figures."""
    from autocompress.engine.confirm import apply_confirmed, confirm_latencies

    def measure(data: bytes) -> dict:
        if interrupt.stopping:
            raise KeyboardInterrupt
        return executor.get(executor.submit_measure(data))

    try:
        confirmed = confirm_latencies(state.records, state.baselines, state.rd.path, measure, cfg.confirm_rounds, log)
    except KeyboardInterrupt:
        log("latency confirmation skipped (Ctrl-C): the report shows the figures measured during the search")
        return
    except Exception as e:  # noqa: BLE001 - the search's own figures stand
        log(f"latency confirmation failed ({describe_error(e)}): the report shows the figures measured "
            "during the search")
        return
    for f, c in confirmed.items():
        latency.store((state.rd.path / f).read_bytes(), {**c.summary})
    for rec in list(state.records.values()):
        new = apply_confirmed(rec, confirmed)
        if new is not rec:
            state.put(new)
    state.baselines = {k: apply_confirmed(b, confirmed) for k, b in state.baselines.items()}
    state.save_baselines()
    state.save()


def _finish(state: RunState, scheduler: Scheduler, cfg: SearchConfig, stopping: bool, wall: float) -> None:
    counted = scheduler.counted()
    finished = (cfg.budget.trials is None or counted >= cfg.budget.trials or scheduler.exhausted
                or (scheduler.limits.max_proposals is not None and counted >= scheduler.limits.max_proposals))
    state.meta.update(status="complete" if finished and not stopping else "stopped",
                      finished=dt.datetime.now().isoformat(timespec="seconds"), wall_seconds=round(wall, 1),
                      trials_complete=state.count(TrialState.COMPLETE), trials_failed=state.count(TrialState.FAIL),
                      trials_repeated=state.count(TrialState.DUPLICATE),
                      trials_stopped_early=state.count(TrialState.STOPPED),
                      trials_skipped=state.count(TrialState.SKIPPED), target_latency_ms=cfg.target_latency_ms,
                      space_exhausted=scheduler.exhausted)
    if isinstance(state.meta.get("latency_model"), dict) and "failed" not in state.meta["latency_model"]:
        from autocompress.latency_model.predict import prediction_errors

        pairs = [(r.predicted_ms, r.latency.median_ms) for r in state.records.values()
                 if r.measured and r.predicted_ms is not None and r.duplicate_of is None and r.reused is None]
        state.meta["latency_model"]["errors"] = prediction_errors(pairs)
    state.save()
