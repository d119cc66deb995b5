"""One base error for everything a user can get wrong; the CLI turns these into one line + exit 2."""

from __future__ import annotations

__all__ = [
    "AutocompressError",
    "ConfigError",
    "DataError",
    "ModelError",
    "SpaceError",
    "ClusterError",
    "RunError",
    "Interrupted",
    "location",
    "describe_error",
]


def location(loc: tuple) -> str:
    """A pydantic error location as `a.b.0`; a key that is not a plain name or number is quoted."""
    def part(p) -> str:
        text = str(p)
        plain_number = text.isascii() and text.removeprefix("-").isdigit()
        return text if isinstance(p, int) or text.isidentifier() or plain_number else repr(p)

    return ".".join(part(p) for p in loc) or "(top level)"


class AutocompressError(Exception):
    """A problem the user can fix. The message names the problem and the fix, on one line."""

    def __init__(self, message: object = "") -> None:
        # one line whatever went into it (a YAML key or a library message may hold newlines)
        super().__init__(" ".join(str(message).split()))


class ConfigError(AutocompressError):
    """A flag or config value is malformed."""


class DataError(AutocompressError):
    """The dataset is missing, empty or unreadable."""


class ModelError(AutocompressError):
    """The model cannot be built, loaded or traced."""


class SpaceError(AutocompressError):
    """The search-space YAML is malformed or selects nothing."""


class ClusterError(AutocompressError):
    """Ray cannot be reached or started."""


class RunError(AutocompressError):
    """A run directory is missing, incomplete or already in use."""


class Interrupted(RunError):
    """The search (or finalize) was stopped at once, by Ctrl-C or SIGTERM; the run is resumable. `exit_code` is the
    shell's for the signal: 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str, *, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def describe_error(e: BaseException) -> str:
    """The last non-empty line of an exception's text (a RayTaskError starts with Ray's wrapper), at most 500
    characters: what a failed trial, scan or measurement records."""
    text = str(e).strip().splitlines()
    last = next((line for line in reversed(text) if line.strip()), type(e).__name__)
    return last[:500]
