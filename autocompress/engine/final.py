"""From search to ship: the chosen trial's configuration rebuilt from the baseline and fine-tuned for longer.

A search fine-tunes each candidate briefly because it tries dozens; the model a user ships gets a full fine-tune:
all training images, more epochs, the trials' distillation and quantization-aware setup. Then it is exported,
quantized, verified and measured exactly like a trial, and its latency is re-measured in one window with the
FP32 baseline and the trial as searched, so the speed-ups compare one moment of the device.

`finalize` is a short sequence of named steps, like the search driver: choose the trial, rebuild its inputs,
fine-tune (checkpointed every epoch: a kill or Ctrl-C resumes from the last epoch done), build the artifact,
measure, write `RUN/final/<name>/`.

The last epoch's weights are shipped, not the epoch with the best validation accuracy: validation is the
figure `pick` ranks finalized models by, so choosing the epoch on it would make them look better than they are.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from autocompress.config import TrainConfig
from autocompress.engine.plan import plan_resume
from autocompress.errors import ConfigError, Interrupted, RunError
from autocompress.fileio import atomic_write_bytes, atomic_write_text
from autocompress.pipeline.devices import resolve_train_device
from autocompress.pipeline.finetune import Trainer, evaluate
from autocompress.pipeline.quantize import fake_quantized
from autocompress.pipeline.trial import TrialSpec, build_artifact, pruned_copy
from autocompress.results.pick import ModelConfig, channels_before
from autocompress.results.records import TrialRecord, TrialState
from autocompress.results.rundir import RunDir
from autocompress.space import DROP

__all__ = ["FinalModel", "Figures", "finalize", "default_epochs", "report_lines", "resumable"]

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class Figures:
    val_accuracy: float  # % of the ONNX file
    test_accuracy: float
    latency_ms: float  # median, re-measured in the same window as the others
    size_bytes: int


@dataclass(frozen=True)
class FinalModel:
    name: str
    trial: int
    dir: Path  # RUN/final/<name>/
    onnx: Path
    epochs: int  # asked for
    epochs_done: int
    searched: Figures  # the trial's file as the search left it
    final: Figures
    fp32: Figures
    config: ModelConfig
    integer_layers: list[str]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(dir=str(self.dir), onnx=str(self.onnx))
        return d


def default_epochs(n_train: int) -> int:
    """Enough passes for about 100,000 images seen, between 10 and 30 epochs."""
    return int(min(30, max(10, math.ceil(100_000 / max(1, n_train)))))


def finalize(run_dir: str | Path, *, trial: int | None = None, max_latency_ms: float | None = None,
             min_accuracy: float | None = None, epochs: int | None = None, name: str | None = None,
             model: torch.nn.Module | None = None, train_data=None, val_data=None, test_data=None, calib_data=None,
             rounds: int = 3, progress: bool = True, log: Callable[[str], None] = print) -> FinalModel:
    """Fine-tune trial `trial` of the run (or the model `pick` chooses under the constraints) for longer and ship
    it as `RUN/final/<name>/model.onnx`, measured like a trial. A run searched on a model object and Datasets
    needs them again (`model=`, `train_data=`, ...); a run of the CLI rebuilds them from its config."""
    rd = RunDir.open(run_dir)
    record = _chosen_trial(rd, trial, max_latency_ms, min_accuracy)
    name = name or f"trial{record.trial}"
    out = rd.path / "final" / name
    # the run's checked config, model and splits, as a resumed search has them, with every training image
    prep = plan_resume(rd.path, model=model, train_data=train_data, val_data=val_data, test_data=test_data,
                       calib_data=calib_data, log=log, max_images={"train": None}, recorded_preprocessing=True)
    baseline = _baseline_model(prep, log)
    epochs = epochs or default_epochs(len(prep.splits.train))
    spec = _spec(prep, record, epochs)
    log(f"finalize trial {record.trial} -> {out}: {epochs} epochs on {len(prep.splits.train)} training images "
        f"({spec.train_device})")
    t0 = time.perf_counter()
    tuned = _fine_tune(baseline, prep.splits, spec, out, log, progress, plan=_plan(record.trial, spec))
    artifact = build_artifact(tuned.model, prep.splits, spec, tuned.kept)
    onnx = out / "model.onnx"
    atomic_write_bytes(onnx, artifact.onnx_bytes)
    latency = _measure_together(prep, {"fp32": rd.path / _onnx_of(rd, "baseline-fp32"),
                                       "searched": rd.path / _onnx_of(rd, record), "final": onnx}, rounds, log)
    final = _write(rd, out, name, record, spec, tuned, artifact, latency, time.perf_counter() - t0)
    (out / CHECKPOINT).unlink(missing_ok=True)  # finished: the resumable state is no longer needed
    log(f"final model: {final.onnx} (test {final.final.test_accuracy:.2f}% vs {final.searched.test_accuracy:.2f}% "
        f"as searched; {final.final.latency_ms:.4f} ms vs {final.searched.latency_ms:.4f} ms)")
    return final


@dataclass
class Tuned:
    model: torch.nn.Module  # pruned, fine-tuned, float (the last epoch's weights)
    kept: dict[str, tuple[int, int]]  # group -> channels before, after
    epochs_done: int
    history: list[dict]  # per epoch: loss, PyTorch (fake-quant) validation accuracy


def _records(rd: RunDir) -> dict[int, TrialRecord]:
    from autocompress.engine.state import RunState

    return RunState.load_records(rd)


def _chosen_trial(rd: RunDir, trial: int | None, max_latency_ms: float | None,
                  min_accuracy: float | None) -> TrialRecord:
    """The record of the trial to finalize: the one named, or the one `pick` chooses under the constraints."""
    if trial is None:
        if max_latency_ms is None and min_accuracy is None:
            raise ConfigError("say which model to finalize: --trial N, or --max-latency-ms / --min-accuracy to "
                              f"finalize the model `autocompress pick {rd.path}` chooses under them")
        from autocompress.results.pick import pick

        chosen = pick(rd.path, max_latency_ms=max_latency_ms, min_accuracy=min_accuracy).chosen
        if chosen is None or not isinstance(chosen.trial, int):
            raise ConfigError(f"no searched model of {rd.path} meets the constraints; `autocompress pick {rd.path}` "
                              "with them lists the nearest, or name one with --trial N")
        trial = chosen.trial
    records = _records(rd)
    rec = records.get(trial)
    if rec is None:
        known = f"its trials are 0-{max(records)}" if records else "it has no trials"
        raise ConfigError(f"trial {trial} does not exist in {rd.path} ({known}); `autocompress pick {rd.path}` "
                          "lists the Pareto models")
    if rec.state not in (TrialState.COMPLETE, TrialState.DUPLICATE) or not rec.measured:
        why = f": {rec.error}" if rec.error else ""
        raise ConfigError(f"trial {trial} of {rd.path} did not complete ({rec.state.value}{why}); finalize a "
                          "completed trial (`autocompress pick` lists them)")
    return rec


def _baseline_model(prep, log: Callable[[str], None]) -> torch.nn.Module:
    """The run's own FP32 model: the object or weights it was given, or the model it trained, read back from where
    the run recorded it (training again on every training image would give another model than the trials')."""
    if prep.trained:
        return prep.model
    path = Path(_meta(prep).get("baseline", {}).get("path", ""))
    if not path.is_file():
        raise RunError(f"the FP32 model {prep.run_dir} trained is no longer at {path}; finalize needs that very "
                       "model: search again, or search with --weights to keep the baseline yourself")
    prep.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    log(f"baseline: the run's own, {path}")
    return prep.model.eval()


def _spec(prep, record: TrialRecord, epochs: int) -> TrialSpec:
    """The trial's own configuration (its record's choices, whatever the space says now), fine-tuned longer."""
    cfg = prep.config
    ratios = {k.split(":", 1)[1]: float(v) for k, v in record.choices.items() if k.startswith("prune:")}
    precisions = {k.split(":", 1)[1]: str(v) for k, v in record.choices.items() if k.startswith("quant:")}
    reduce_range = bool(_meta(prep)["quant_format"]["reduce_range"])
    finetune = TrainConfig(**{**cfg.finetune.model_dump(), "epochs": epochs})
    device = resolve_train_device(cfg.train_device, torch.cuda.device_count())  # this machine's GPU, if any
    return TrialSpec(ratios, precisions, finetune, round_to=prep.space.round_to, min_channels=prep.space.min_channels,
                     seed=cfg.seed, reduce_range=reduce_range, train_device=device,
                     criterion=str(record.choices.get("criterion", "l2")),
                     drop_blocks=tuple(k.split(":", 1)[1] for k, v in record.choices.items()
                                       if k.startswith("depth:") and v == DROP))


def _plan(trial: int, spec: TrialSpec) -> dict:
    """What a checkpoint must have been made for to be resumed: the trial, its configuration and the fine-tune."""
    return {"trial": trial, "ratios": dict(spec.ratios), "precisions": dict(spec.precisions),
            "criterion": spec.criterion, "seed": spec.seed, "finetune": spec.finetune.model_dump()}


def resumable(path: Path, plan: dict, log: Callable[[str], None]) -> dict | None:
    """The checkpoint at `path` if it was made for `plan`, else None: one of another trial or other settings (the
    same --name) is said in one line and replaced by a fresh start."""
    if not path.is_file():
        return None
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if ck.get("plan") != plan:
        made = ck.get("plan") or {}
        log(f"  {path} was made for trial {made.get('trial', '?')} with other settings than trial {plan['trial']} "
            f"now ({made.get('finetune', {}).get('epochs', '?')} vs {plan['finetune']['epochs']} epochs, ...): "
            "starting afresh")
        return None
    return ck


def _fine_tune(baseline: torch.nn.Module, splits, spec: TrialSpec, out: Path, log: Callable[[str], None],
               progress: bool, *, plan: dict) -> Tuned:
    """Prune the baseline as the trial did, then fine-tune with fake quantization and distillation, one epoch at a
    time: each epoch's state is checkpointed (a killed run resumes from it when it was made for the same `plan`),
    the last epoch's weights are kept (the schedule's end; see the module's note)."""
    model, kept, spec = pruned_copy(baseline, splits, spec)  # as the trial built it (its blocks removed too)
    path = out / CHECKPOINT
    with fake_quantized(model, spec.precisions, reduce_range=spec.reduce_range) as qmodel:
        trainer = Trainer(qmodel, len(splits.train), settings=spec.finetune, seed=spec.seed, teacher=baseline,
                          device=spec.train_device, augment=splits.augment)
        history: list[dict] = []
        ck = resumable(path, plan, log)
        if ck is not None:
            model.load_state_dict(ck["model"])
            trainer.load_state_dict(ck["trainer"])
            history = ck["history"]
            log(f"  resumed after epoch {trainer.epochs_done} ({path})")
        total = math.ceil(spec.finetune.epochs)
        try:
            while not trainer.done:
                loss = trainer.epoch(splits.train)
                val = evaluate(qmodel, splits.val)
                history.append({"epoch": trainer.epochs_done, "loss": round(loss, 5), "val_accuracy": round(val, 4)})
                _checkpoint(path, model, trainer, history, plan)
                if progress:
                    log(f"  epoch {trainer.epochs_done}/{total}: loss {loss:.3f}, validation {val:.2f}% "
                        "(PyTorch, fake-quantized)")
        except KeyboardInterrupt:
            raise Interrupted(f"finalize stopped after epoch {trainer.epochs_done} of {total}, kept in {path}: run "
                              "the same command again to resume") from None
    return Tuned(model.eval(), kept, trainer.epochs_done, history)


def _checkpoint(path: Path, model: torch.nn.Module, trainer: Trainer, history: list[dict], plan: dict) -> None:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "trainer": trainer.state_dict(), "history": history,
                "plan": plan}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _onnx_of(rd: RunDir, record: TrialRecord | str) -> str:
    if isinstance(record, str):  # a baseline, by its kind
        rec = TrialRecord.from_row(rd.read_json(rd.baselines_json)[record.removeprefix("baseline-")])
    else:
        rec = record
    assert rec.artifact is not None
    return rec.artifact.onnx


def _meta(prep) -> dict:
    return RunDir(prep.run_dir).read_json(RunDir(prep.run_dir).meta)


def _measure_together(prep, files: dict[str, Path], rounds: int, log: Callable[[str], None]) -> dict[str, dict]:
    """Each file measured in `rounds` rounds, the order reversed every other round, on this machine: one window
    of the device for all three. The figure is the median of a file's rounds (confirm.summarise)."""
    from autocompress.engine.confirm import summarise
    from autocompress.measure.latency import LatencyMeter
    from autocompress.runtime.device import fingerprint

    meter = LatencyMeter(prep.config.latency)
    here, searched_on = fingerprint(meter.settings.threads), _meta(prep).get("device", {})
    if (here["cpu"], here["isa"]) != (searched_on.get("cpu"), searched_on.get("isa")):
        log(f"  warning: this machine ({here['cpu']}) is not the device the run was searched on "
            f"({searched_on.get('cpu')}): the figures below are this machine's; finalize on the device itself")
    log(f"  measuring {', '.join(files)} together, {rounds} rounds")
    figures: dict[str, list[dict]] = {k: [] for k in files}
    order = list(files)
    for r in range(rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            figures[k].append(meter.measure(files[k], tuple(prep.splits.input_shape), seed=r).as_dict())
    return {k: {**summarise(v), "rounds_ms": [round(f["median_ms"], 5) for f in v]} for k, v in figures.items()}


def _figures(val: float, test: float, size: int, latency: dict) -> Figures:
    return Figures(round(val, 4), round(test, 4), round(latency["median_ms"], 5), int(size))


def _write(rd: RunDir, out: Path, name: str, record: TrialRecord, spec: TrialSpec, tuned: Tuned, artifact,
           latency: dict[str, dict], seconds: float) -> FinalModel:
    """final.json (the figures, the plan, the epochs, and the row `pick` reads) and report.md in `out`."""
    from autocompress.engine.state import record_of
    from autocompress.results.records import LatencyFigures
    from autocompress.runtime.device import fingerprint

    fp32 = TrialRecord.from_row(rd.read_json(rd.baselines_json)["fp32"])
    assert fp32.artifact is not None and record.artifact is not None
    before = channels_before(rd.read_json(rd.meta))
    config = ModelConfig({g: {"ratio": r, "channels": before.get(g, tuned.kept.get(g, (None,))[0]),
                              "kept": tuned.kept.get(g, (None, None))[1]} for g, r in spec.ratios.items()},
                         dict(spec.precisions), spec.criterion)
    final = FinalModel(
        name=name, trial=record.trial, dir=out, onnx=out / "model.onnx", epochs=math.ceil(spec.finetune.epochs),
        epochs_done=tuned.epochs_done,
        searched=_figures(record.artifact.val_accuracy, record.artifact.test_accuracy, record.artifact.size_bytes,
                          latency["searched"]),
        final=_figures(artifact.val_accuracy, artifact.test_accuracy, artifact.size_bytes, latency["final"]),
        fp32=_figures(fp32.artifact.val_accuracy, fp32.artifact.test_accuracy, fp32.artifact.size_bytes,
                      latency["fp32"]),
        config=config, integer_layers=list(artifact.integer_layers))
    row = record_of(record.trial, artifact, LatencyFigures.from_measurement(latency["final"]),
                    str((out / "model.onnx").relative_to(rd.path)), seconds, choices=dict(record.choices),
                    kind=f"final-{name}").to_row()
    doc = {**final.to_dict(), "seconds": round(seconds, 1), "finetune": spec.finetune.model_dump(),
           "history": tuned.history, "latency": latency, "device": fingerprint(1), "row": row}
    atomic_write_text(out / "final.json", json.dumps(doc, indent=2, default=str) + "\n")
    atomic_write_text(out / "report.md", "\n".join(report_lines(final)) + "\n")
    return final


def report_lines(f: FinalModel) -> list[str]:
    """The final model's section: accuracy and latency before and after the long fine-tune, beside FP32."""
    def row(label: str, x: Figures) -> str:
        return (f"| {label} | {x.val_accuracy:.2f} | {x.test_accuracy:.2f} | {x.latency_ms:.4f} "
                f"| {f.fp32.latency_ms / x.latency_ms:.2f}x | {x.size_bytes / 1e6:.3f} |")

    return [f"### Final model `{f.name}` (trial {f.trial})", "",
            f"Fine-tuned {f.epochs_done} of {f.epochs} epochs, the last epoch's weights kept (no epoch was chosen on "
            "validation accuracy); the three latencies were measured together, in alternating rounds.", "",
            "| model | val % | test % | latency ms | vs FP32 | MB |", "|---|---|---|---|---|---|",
            row("FP32 baseline", f.fp32), row(f"trial {f.trial} as searched", f.searched),
            row(f"trial {f.trial} finalized", f.final), "", f"File: `{f.onnx}`"]
