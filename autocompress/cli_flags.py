"""The search command's flags: their help texts, and how they resolve (over a config file) to a SearchConfig."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError

from autocompress.config import DEFAULT_BUDGET_TRIALS
from autocompress.errors import ConfigError

__all__ = ["SEARCH_HELP", "crop_flag", "floats_flag", "caps_flag", "config_from_flags"]

SEARCH_HELP = {
    "config": (
        "A run config YAML holding any of these options (keys as in config.json of a run); flags given here "
        "override it."
    ),
    "budget": (
        f"Trials (e.g. 40) or wall-clock time (e.g. 10m, 1h, 1h30m); new trials start only within it. Default: "
        f"{DEFAULT_BUDGET_TRIALS} trials (with --resume: the run's own)."
    ),
    "resume": (
        "Continue the search in this run directory (after a kill, Ctrl-C or crash) with the config stored in "
        "it; the budget counts what was already spent, --budget sets a new total."
    ),
    "model": "Built-in name (see `autocompress models`), a torchvision model name, or module:function.",
    "weights": (
        "Trained weights of the model (a state_dict or a whole saved model): the baseline. Default: train it "
        "on the data."
    ),
    "num_classes": "Classes the model should have; checked against the data.",
    "dataset": (
        "digits (scikit-learn's handwritten digits, shipped with it: the demo), cifar10, cifar100, mnist, "
        "fashionmnist, svhn or imagefolder."
    ),
    "data_dir": "Folder of a file-based dataset (cifar10, cifar100, mnist, fashionmnist, svhn, imagefolder).",
    "download": "Let torchvision download a named dataset into --data-dir (off: read local files only).",
    "input_size": "The model's input side: images are center-cropped to this many pixels square (same as --crop).",
    "crop": "Center crop, in pixels square: the model's input (and the latency input shape). Same as --input-size.",
    "resize": "Resize the short side to this many pixels before the center crop (default: the crop; e.g. 146 for 128).",
    "normalize": (
        "Per-channel normalization: dataset (the training images' mean/std), imagenet (ImageNet's, for models "
        "trained on it) or none. --mean/--std override it."
    ),
    "mean": "Per-channel mean the model was trained with, on the 0-1 scale, e.g. 0.485,0.456,0.406 (with --std).",
    "std": "Per-channel std the model was trained with, on the 0-1 scale, e.g. 0.229,0.224,0.225 (with --mean).",
    "augment": (
        "Fine-tuning augmentation: auto (crop-flip for natural images, shift for digits), crop-flip (random "
        "resized crop + horizontal flip), shift (random shifts, never flipped) or none."
    ),
    "data_workers": "Processes decoding images for each reader of a file dataset (0: decode in the reader itself).",
    "max_images": (
        "Images kept per split, a speed setting recorded in the run: e.g. train=5000,val=1000 for faster CPU "
        "trials. By default every image is used except the calibration sample (calib=500); all: no cap at all."
    ),
    "space": (
        "Search-space YAML (default: the one shipped in the package, autocompress/search_spaces/default.yaml;"
        " examples to copy in search_spaces/)."
    ),
    "out": "Run directory (default: reports/<model>-<dataset>-<time>).",
    "seed": "Seed for data splits, sampler and fine-tuning.",
    "ray_address": "Join an existing Ray cluster (HOST:PORT from `ray start --head`); default: start a local Ray.",
    "concurrency": "Trials running at once (each gets CPUs/concurrency threads).",
    "device": (
        "Where latency is measured: local (this machine), or the name of a Ray custom resource carried by the"
        " target device's node."
    ),
    "latency_threads": "ONNX Runtime intra-op threads when measuring latency (default 1).",
    "latency_batch": "Batch size when measuring latency (default 1).",
    "sampler": (
        "tpe, nsga2, random, or grid (only the uniform settings: every ratio of the space for all "
        "groups x fp32/int8 for all layers, each distinct model once)."
    ),
    "baselines": (
        "Uniform references to measure in this run, comma-separated: fp32 (always), int8, prune25-int8, "
        "prune50-int8 (default: all four; the pruned ones cost a fine-tune each)."
    ),
    "finetune_epochs": "Epochs of the KD fine-tune per trial (default 6).",
    "baseline_epochs": "Epochs to train the baseline when it is not cached (default 15).",
    "no_progress": "No live progress bar (for logs).",
    "trial_timeout": "Seconds after which a running trial is stopped and recorded as failed (default 1800).",
    "early_stop": (
        "Stop a trial's fine-tune when its validation accuracy halfway through is more than this many points "
        "below FP32's (default 0: never)."
    ),
    "multi_fidelity": (
        "Stop a trial's fine-tune halfway when a finished trial measured at least as fast as this one is predicted "
        "(by the latency model, which it needs) was more than this many points more accurate at the same point "
        "(default 0: never)."
    ),
    "no_sensitivity": (
        "Skip the per-layer sensitivity scan (each group pruned alone, each layer quantized alone, no "
        "fine-tune; cached per model) that narrows the space and warm-starts the sampler."
    ),
    "split_seed": (
        "Seed of the data splits (default: --seed). Give searches of several seeds on one baseline the same split "
        "seed, so that none carves its test images from the images the baseline was trained on."
    ),
    "size": (
        "Search for smaller files too: offer precisions whose only gain over int8 is size (int4 weights). Without "
        "it, a layer's int4 is dropped where the device's latency table shows it no faster than int8."
    ),
    "funnel": (
        "Candidates scored cheaply before the trials (pruned, fake-quantized, BatchNorm re-estimated on training "
        "images, scored on a fixed validation sample: no training) over a ladder of latency targets; each target's "
        "best are fine-tuned briefly, and the best of those fine-tuned to the end first (default: 20 per trial of the "
        "budget, at most 400, or up to 1000 within 15% of a time budget; 0: no funnel). Needs the latency model."
    ),
    "confirm_rounds": (
        "When the budget is spent, measure every Pareto model and baseline again, together, this many rounds "
        "(2 more for a model whose rounds disagree by over 4%), and report their median, so the figures "
        "compared come from one window of time (default 2; 0: keep the figures from the search)."
    ),
    "no_latency_cache": "Measure every artifact, even one whose graph this device has measured before.",
    "target_latency_ms": ("Build only configurations the latency model predicts within this latency (ms, with 15% "
                          "slack for its error); the others are skipped before they train, at no cost, and the "
                          "sampler learns to avoid them. Pick among the results with `pick --max-latency-ms`."),
    "screen": ("Skip, unbuilt, each proposal the latency model predicts more than 25% slower than a model already "
               "measured that keeps at least its channels in every group and every layer at least as precise (on by "
               "default): it could not be more accurate and would be slower, so its fine-tune is saved. Needs the "
               "latency model; never with --sampler grid."),
    "latency_model": ("Predict each trial's latency before it trains (on by default): every layer is timed alone on "
                      "the device at each channel count and precision the space offers (once per device, cached), "
                      "fitted to whole models measured, and the prediction is shown beside the measured figure."),
    "train_device": (
        "Where trials fine-tune: auto (a GPU when torch, or the Ray cluster, has one), cpu or cuda. Export, "
        "quantization, accuracy and latency stay on the CPU."
    ),
    "gpus_per_trial": "GPUs one trial asks Ray for when fine-tuning on CUDA; a fraction (0.5) lets trials share one.",
    "dry_run": "Print the resolved config and the search space (groups, layers, choices) as JSON, and exit.",
    "verbose": "On an error, also print the traceback of what raised it (e.g. your model's own code).",
}


def crop_flag(crop: int | None, input_size: int, ctx: typer.Context) -> int | None:
    """--crop is --input-size by another name; both given must agree."""
    src = ctx.get_parameter_source("input_size")
    if crop is not None and src is not None and src.name == "COMMANDLINE" and crop != input_size:
        raise ConfigError(f"--crop {crop} and --input-size {input_size} disagree; they are the same setting, "
                          "give one of them")
    return crop


def floats_flag(flag: str, text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a list of numbers; give one per channel, e.g. "
                          f"{flag} {'0.485,0.456,0.406' if flag == '--mean' else '0.229,0.224,0.225'}") from None


def caps_flag(text: str | None) -> dict[str, int | None] | None:
    """--max-images: `all`, or split=N|all pairs."""
    from autocompress.config import DEFAULT_MAX_IMAGES

    if text is None:
        return None
    if text.strip().lower() in ("all", "none"):
        return {k: None for k in DEFAULT_MAX_IMAGES}
    caps: dict[str, int | None] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip().lower()
        if key not in DEFAULT_MAX_IMAGES or not value:
            raise ConfigError(f"--max-images {text!r}: {item.strip()!r} is not split=N; use e.g. "
                              f"train=20000,val=2000 (splits: {', '.join(DEFAULT_MAX_IMAGES)}) or all")
        if value in ("all", "none"):
            caps[key] = None
        elif value.isdigit() and int(value) >= 1:
            caps[key] = int(value)
        else:
            raise ConfigError(f"--max-images {text!r}: {key}={value} is not a positive number of images or 'all'")
    return caps


def config_from_flags(ctx: typer.Context, config: Path | None, budget: str | None, flags: dict, overrides: dict,
                       sections: dict[str, dict]):
    """The SearchConfig of a new search: the config file, then the flags given on the command line."""
    from autocompress.config import SearchConfig, config_error, load_config_file, parse_budget

    def given(name: str) -> bool:  # typer vendors click: compare the enum by name
        src = ctx.get_parameter_source(name)
        return src is not None and src.name == "COMMANDLINE"

    data = load_config_file(config) if config is not None else {}
    defaults = SearchConfig().model_dump()
    unknown = [k for k in data if k not in defaults]
    if unknown:
        raise ConfigError(f"{unknown[0]!r} in {config}: unknown key; allowed keys are {', '.join(defaults)}")
    for section in ("baseline", "finetune", "latency"):  # a partial section keeps the other defaults
        if isinstance(data.get(section), dict):
            data[section] = {**defaults[section], **data[section]}
    for key, value in flags.items():  # flags on the command line win; defaults only fill gaps
        if given(key) or key not in data:
            data[key] = value
    if budget is not None:  # none here or in the file: SearchConfig's default
        data["budget"] = parse_budget(budget).model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    for section, values in sections.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            base = data.get(section) if isinstance(data.get(section), dict) else defaults[section]
            data[section] = {**base, **values}
    try:
        return SearchConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(e, str(config) if config is not None else "the command line") from None
