"""How a run's recorded preprocessing (meta.json `preprocessing`) reads in logs and reports."""

from __future__ import annotations

__all__ = ["describe_preprocessing", "recorded_preprocessing"]


def describe_preprocessing(d: dict) -> str:
    """One line for logs and the report, from the fields of a `tasks.preprocess.Preprocessing` (or its record)."""
    mean = ", ".join(f"{float(v):.3f}" for v in d["mean"])
    std = ", ".join(f"{float(v):.3f}" for v in d["std"])
    scale = float(d.get("scale", 255.0))
    channels = int(d.get("channels", len(d["mean"])))
    return (f"resize {int(d['resize'])}, center crop {int(d['crop'])}, /{scale:g}, mean ({mean}), std ({std}) "
            f"[{d.get('normalize', 'given')}], {'grayscale' if channels == 1 else 'RGB'}")


def recorded_preprocessing(meta: dict) -> str:
    """The preprocessing line of a run's report ("" when the user's Datasets did their own)."""
    pre = meta.get("preprocessing")
    if not pre:
        return ""
    return ("Preprocessing (as the deployed model needs it, also written by pick --export): "
            f"{describe_preprocessing(pre)}; fine-tuning augmentation: {meta.get('augment', '?')}.")
