"""Command line: flags -> one SearchConfig -> the library's own functions (autocompress.api). A user error is one line
on stderr and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from autocompress.cli_flags import SEARCH_HELP, caps_flag, config_from_flags, crop_flag, floats_flag
from autocompress.errors import AutocompressError, Interrupted

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
    help="Search per-layer structured pruning and precision (fp32/int8/int4) for a PyTorch CNN; every "
         "accuracy, latency and size in the report is measured on the exported ONNX file under ONNX Runtime.",
)


def _fail(e: Exception, verbose: bool = False) -> None:
    """One line naming the problem and the fix, exit status 2; with --verbose, first the traceback of what the
    user's own code (or a library) raised underneath."""
    if verbose and e.__cause__ is not None:
        import traceback

        typer.echo("".join(traceback.format_exception(e.__cause__)).rstrip(), err=True)
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


# The search command's option help (`autocompress search --help`), kept apart so the command reads in one screen.
@app.command()
def search(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=SEARCH_HELP["config"]),
    budget: Optional[str] = typer.Option(None, "--budget", "-b", help=SEARCH_HELP["budget"]),
    resume: Optional[Path] = typer.Option(None, "--resume", help=SEARCH_HELP["resume"]),
    model: str = typer.Option("resnet20", "--model", "-m", help=SEARCH_HELP["model"]),
    weights: Optional[Path] = typer.Option(None, "--weights", help=SEARCH_HELP["weights"]),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help=SEARCH_HELP["num_classes"]),
    dataset: str = typer.Option("digits", "--dataset", "-d", help=SEARCH_HELP["dataset"]),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help=SEARCH_HELP["data_dir"]),
    download: bool = typer.Option(False, "--download", help=SEARCH_HELP["download"]),
    input_size: int = typer.Option(32, "--input-size", help=SEARCH_HELP["input_size"]),
    crop: Optional[int] = typer.Option(None, "--crop", help=SEARCH_HELP["crop"]),
    resize: Optional[int] = typer.Option(None, "--resize", help=SEARCH_HELP["resize"]),
    normalize: Optional[str] = typer.Option(None, "--normalize", help=SEARCH_HELP["normalize"]),
    mean: Optional[str] = typer.Option(None, "--mean", help=SEARCH_HELP["mean"]),
    std: Optional[str] = typer.Option(None, "--std", help=SEARCH_HELP["std"]),
    augment: Optional[str] = typer.Option(None, "--augment", help=SEARCH_HELP["augment"]),
    data_workers: Optional[int] = typer.Option(None, "--data-workers", help=SEARCH_HELP["data_workers"]),
    max_images: Optional[str] = typer.Option(None, "--max-images", help=SEARCH_HELP["max_images"]),
    space: Optional[Path] = typer.Option(None, "--space", help=SEARCH_HELP["space"]),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help=SEARCH_HELP["out"]),
    seed: int = typer.Option(0, "--seed", help=SEARCH_HELP["seed"]),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=SEARCH_HELP["ray_address"]),
    concurrency: int = typer.Option(1, "--concurrency", help=SEARCH_HELP["concurrency"]),
    device: str = typer.Option("local", "--device", help=SEARCH_HELP["device"]),
    train_device: str = typer.Option("auto", "--train-device", help=SEARCH_HELP["train_device"]),
    gpus_per_trial: float = typer.Option(1.0, "--gpus-per-trial", help=SEARCH_HELP["gpus_per_trial"]),
    latency_threads: Optional[int] = typer.Option(None, "--latency-threads", help=SEARCH_HELP["latency_threads"]),
    latency_batch: Optional[int] = typer.Option(None, "--latency-batch", help=SEARCH_HELP["latency_batch"]),
    sampler: str = typer.Option("tpe", "--sampler", help=SEARCH_HELP["sampler"]),
    baselines: Optional[str] = typer.Option(None, "--baselines", help=SEARCH_HELP["baselines"]),
    finetune_epochs: Optional[float] = typer.Option(None, "--finetune-epochs", help=SEARCH_HELP["finetune_epochs"]),
    baseline_epochs: Optional[float] = typer.Option(None, "--baseline-epochs", help=SEARCH_HELP["baseline_epochs"]),
    no_progress: bool = typer.Option(False, "--no-progress", help=SEARCH_HELP["no_progress"]),
    trial_timeout: Optional[float] = typer.Option(None, "--trial-timeout", help=SEARCH_HELP["trial_timeout"]),
    early_stop: Optional[float] = typer.Option(None, "--early-stop", help=SEARCH_HELP["early_stop"]),
    multi_fidelity: Optional[float] = typer.Option(None, "--multi-fidelity", help=SEARCH_HELP["multi_fidelity"]),
    no_sensitivity: bool = typer.Option(False, "--no-sensitivity", help=SEARCH_HELP["no_sensitivity"]),
    funnel: Optional[int] = typer.Option(None, "--funnel", help=SEARCH_HELP["funnel"]),
    split_seed: Optional[int] = typer.Option(None, "--split-seed", help=SEARCH_HELP["split_seed"]),
    size: bool = typer.Option(False, "--size", help=SEARCH_HELP["size"]),
    confirm_rounds: Optional[int] = typer.Option(None, "--confirm-rounds", help=SEARCH_HELP["confirm_rounds"]),
    no_latency_cache: bool = typer.Option(False, "--no-latency-cache", help=SEARCH_HELP["no_latency_cache"]),
    target_latency_ms: Optional[float] = typer.Option(None, "--target-latency-ms",
                                                      help=SEARCH_HELP["target_latency_ms"]),
    latency_model: Optional[bool] = typer.Option(None, "--latency-model/--no-latency-model",
                                                 help=SEARCH_HELP["latency_model"]),
    screen: Optional[bool] = typer.Option(None, "--screen/--no-screen", help=SEARCH_HELP["screen"]),
    dry_run: bool = typer.Option(False, "--dry-run", help=SEARCH_HELP["dry_run"]),
    verbose: bool = typer.Option(False, "--verbose", help=SEARCH_HELP["verbose"]),
) -> None:
    """Run a compression search and write reports/<run>/report.html."""
    try:
        if resume is None:
            flags = dict(model=model, weights=weights, num_classes=num_classes, dataset=dataset, data_dir=data_dir,
                         download=download, input_size=input_size, space=space, out=out, seed=seed,
                         ray_address=ray_address, concurrency=concurrency, sampler=sampler, device=device,
                         train_device=train_device, gpus_per_trial=gpus_per_trial)
            overrides = dict(latency_cache=False if no_latency_cache else None,
                             latency_model=latency_model, screen=screen, target_latency_ms=target_latency_ms,
                             size=True if size else None, split_seed=split_seed,
                             early_stop_points=early_stop, multi_fidelity_points=multi_fidelity,
                             confirm_rounds=confirm_rounds, sensitivity=False if no_sensitivity else None,
                             trial_timeout_s=trial_timeout, input_size=crop_flag(crop, input_size, ctx),
                             resize=resize, normalize=normalize, mean=floats_flag("--mean", mean),
                             std=floats_flag("--std", std), augment=augment, data_workers=data_workers,
                             max_images=caps_flag(max_images),
                             baselines=[b.strip() for b in baselines.split(",") if b.strip()] if baselines else None)
            sections = {"latency": {"threads": latency_threads, "batch": latency_batch},
                        "finetune": {"epochs": finetune_epochs}, "baseline": {"epochs": baseline_epochs},
                        "funnel": {"candidates": funnel}}
            cfg = config_from_flags(ctx, config, budget, flags, overrides, sections)
    except AutocompressError as e:
        _fail(e, verbose)
        return
    from autocompress import api

    again = {"budget": budget} if budget is not None else {}  # --resume takes only --budget: a new total
    if dry_run:
        prep = _guarded(lambda: _plan(cfg) if resume is None else api.plan_resume(resume, log=_log, **again), verbose)
        typer.echo(json.dumps(prep.describe(), indent=2))
    elif resume is None:
        _summary(_guarded(lambda: _search(cfg, progress=not no_progress), verbose))
    else:
        _summary(_guarded(lambda: api.resume(resume, progress=not no_progress, log=_log, **again), verbose))


def _datasets(cfg) -> dict:
    from autocompress.tasks.data import dataset_of_config

    return dataset_of_config(cfg).datasets()


def _search(cfg, *, progress: bool):
    """The flags' model and datasets, searched by the library's own function with the flags' config."""
    from autocompress.api import search as do_search

    data = _datasets(cfg)
    return do_search(cfg.model, data["train"], data["val"], test_data=data["test"], calib_data=data["calib"],
                     config=cfg, progress=progress, log=_log)


def _plan(cfg):
    """What --dry-run prints: the same checks as the search, nothing written."""
    from autocompress.api import plan

    data = _datasets(cfg)
    return plan(cfg.model, data["train"], data["val"], test_data=data["test"], calib_data=data["calib"], config=cfg,
                log=_log)


def _log(text: str) -> None:
    typer.echo(text, err=True)


def _guarded(work, verbose: bool = False):
    """`work()`, for long work: stopped at once (Ctrl-C, SIGTERM) it says so in one line and exits 130 (143 for
    SIGTERM); bad input is one line and exit 2."""
    try:
        return work()
    except Interrupted as e:
        typer.echo(f"stopped: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    except AutocompressError as e:
        _fail(e, verbose)


def _summary(result) -> None:
    """What the search did, in one line, and where its report is."""
    states = result.trials["state"] if len(result.trials) else None
    n_total = len(result.trials)

    def count(state: str) -> int:
        return int((states == state).sum()) if states is not None else 0

    n_done, n_repeat, n_stopped, n_skipped = count("COMPLETE"), count("DUPLICATE"), count("STOPPED"), count("SKIPPED")
    repeats = f" ({n_repeat} repeated configurations reused earlier results)" if n_repeat else ""
    early = f", {n_stopped} stopped early" if n_stopped else ""
    early += f", {n_skipped} skipped as predicted over the latency target" if n_skipped else ""
    typer.echo(f"{n_done} trials done, {n_total - n_done - n_repeat - n_stopped - n_skipped} failed{early}, "
               f"{len(result.pareto)} Pareto models{repeats}")
    typer.echo(f"report: {result.report}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory written by `autocompress search`.")) -> None:
    """Rebuild report.html and report.md from a run's stored results."""
    from autocompress.report import write_report

    try:
        path = write_report(run_dir)
    except AutocompressError as e:
        _fail(e)
        return
    typer.echo(f"report: {path}")


@app.command()
def pick(
    run_dir: Path = typer.Argument(..., help="A run directory written by `autocompress search`."),
    max_latency_ms: Optional[float] = typer.Option(
        None, "--max-latency-ms", help="Upper bound on the median latency (ms); default: none (the most accurate)."),
    min_accuracy: Optional[float] = typer.Option(
        None, "--min-accuracy", help="Lower bound on validation accuracy (%)."),
    max_size_mb: Optional[float] = typer.Option(None, "--max-size-mb", help="Upper bound on the ONNX file size (MB)."),
    export: Optional[Path] = typer.Option(
        None, "--export", help="Copy the chosen ONNX file here, with the preprocessing its input needs beside it "
                               "(model.onnx -> model.preprocessing.json)."),
    as_json: bool = typer.Option(
        False, "--json",
        help="Print one JSON object: the figures (accuracy = test accuracy %), the ONNX file and the configuration "
             "(per group: channels, kept, ratio; per layer: precision)."),
) -> None:
    """Choose the most accurate Pareto model meeting the constraints (exit 1 if none does)."""
    from autocompress.results.pick import pick as do_pick

    for flag, value in (("--max-latency-ms", max_latency_ms), ("--max-size-mb", max_size_mb)):
        if value is not None and value <= 0:
            _fail(ValueError(f"{flag} must be positive, but got {value}"))
    try:
        res = do_pick(run_dir, max_latency_ms=max_latency_ms, min_accuracy=min_accuracy, max_size_mb=max_size_mb,
                      export=export)
    except AutocompressError as e:
        _fail(e)
        return
    if res.chosen is None:
        if as_json:
            typer.echo(json.dumps({"trial": None, "nearest": [r.to_dict() for r in res.nearest],
                                   "baseline": res.baseline.to_dict()}))
        else:
            typer.echo("no Pareto model meets the constraints; nearest:", err=True)
            for r in res.nearest:
                typer.echo(f"  trial {r.trial}: val {r.val_accuracy:.2f}%  test {r.test_accuracy:.2f}%  "
                           f"{r.latency_ms:.3f} ms  {r.size_bytes / 1e6:.3f} MB", err=True)
        raise typer.Exit(1)
    c, b = res.chosen, res.baseline
    if as_json:
        exported = {"exported_to": str(export.resolve())} if export is not None else {}
        typer.echo(json.dumps({**c.to_dict(), **exported, "baseline": b.to_dict()}))
        return
    typer.echo(f"trial {c.trial}: test {c.test_accuracy:.2f}% (val {c.val_accuracy:.2f}%), {c.latency_ms:.3f} ms "
               f"({b.latency_ms / c.latency_ms:.2f}x faster than FP32 {b.latency_ms:.3f} ms), "
               f"{c.size_bytes / 1e6:.3f} MB")
    typer.echo(f"onnx: {export.resolve() if export is not None else c.onnx}")
    if export is not None:
        from autocompress.results.pick import preprocessing_path

        typer.echo(f"preprocessing: {preprocessing_path(export).resolve()}")


@app.command()
def finalize(
    run_dir: Path = typer.Argument(..., help="A run directory written by `autocompress search`."),
    trial: Optional[int] = typer.Option(None, "--trial", "-t", help="The trial to finalize (see `autocompress pick`)."),
    max_latency_ms: Optional[float] = typer.Option(
        None, "--max-latency-ms", help="Instead of --trial: the model `pick` chooses under this latency (ms)."),
    min_accuracy: Optional[float] = typer.Option(
        None, "--min-accuracy", help="Instead of --trial: ... or above this validation accuracy (%)."),
    epochs: Optional[int] = typer.Option(
        None, "--epochs", help="Fine-tuning epochs (default: about 100,000 images seen, 10 to 30 epochs)."),
    name: Optional[str] = typer.Option(None, "--name", help="Its folder under RUN/final/ (default: trial<N>)."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Latency rounds of the final model, FP32 and the trial."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No line per epoch."),
    verbose: bool = typer.Option(False, "--verbose", help="On an error, also print the traceback underneath."),
) -> None:
    """Fine-tune a searched model for longer (all training images, distillation, quantization-aware), then export,
    quantize and measure it like a trial: RUN/final/<name>/model.onnx. The last epoch's
    weights are shipped; Ctrl-C stops, and the same command resumes a stopped or killed run from its last epoch."""
    from autocompress.api import finalize as do_finalize

    f = _guarded(lambda: do_finalize(run_dir, trial=trial, max_latency_ms=max_latency_ms, min_accuracy=min_accuracy,
                                     epochs=epochs, name=name, rounds=rounds, progress=not no_progress, log=_log),
                 verbose)
    typer.echo(f"final {f.name} (trial {f.trial}): test {f.final.test_accuracy:.2f}% "
               f"(as searched {f.searched.test_accuracy:.2f}%), {f.final.latency_ms:.4f} ms "
               f"({f.fp32.latency_ms / f.final.latency_ms:.2f}x faster than FP32), {f.final.size_bytes / 1e6:.3f} MB")
    typer.echo(f"onnx: {f.onnx}")


@app.command()
def models() -> None:
    """List the built-in models (torchvision classification names and module:function also work)."""
    from autocompress.tasks.models import list_models

    for spec in list_models():
        typer.echo(f"{spec.name:12s} {spec.description}")
    typer.echo("also: any torchvision classification model name (e.g. resnet18, mobilenet_v2), "
               "or path/to/file.py:function")


def _click_exceptions():
    """Click's exceptions as typer raises them: typer 0.20 and later vendor click as typer._click."""
    try:
        from typer._click import exceptions
    except ImportError:  # an older typer, on click itself
        from click import exceptions
    return exceptions


def main(args: list[str] | None = None) -> None:
    """The `autocompress` command. A flag click cannot parse (an unknown option, a value of the wrong type, a missing
    argument) is one line and exit 2, like every other bad input; Ctrl-C before a search starts is exit 130."""
    exceptions = _click_exceptions()
    no_args = getattr(exceptions, "NoArgsIsHelpError", ())
    try:
        code = app(args=args, standalone_mode=False)
    except no_args as e:  # `autocompress` alone: its help
        typer.echo(e.ctx.get_help())
        raise SystemExit(2) from None
    except exceptions.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "autocompress"
        typer.echo(f"error: {e.format_message()} (see `{where} --help`)", err=True)
        raise SystemExit(2) from None
    except typer.Abort:  # (typer's own: the click it vendors has none)
        typer.echo("stopped: interrupted before the search started; nothing was written", err=True)
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
