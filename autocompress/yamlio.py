"""Read a user's YAML file, turning every way it can be malformed into one error line of the caller's kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from autocompress.errors import AutocompressError

__all__ = ["read_yaml"]


def read_yaml(path: Path, error: type[AutocompressError], what: str) -> Any:
    """Parse `path`; raise `error` naming the file and the problem (`what` names the file's role)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{path} is not UTF-8 text; save the {what} as a UTF-8 YAML file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise error(f"{path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}; fix the syntax") from None
    except RecursionError:
        raise error(f"{path} nests too deeply to be a {what}; fix the syntax") from None
    except Exception as e:  # noqa: BLE001 - PyYAML's constructors raise ValueError/KeyError/... on bad tagged values
        raise error(f"{path} is not valid YAML: {type(e).__name__}: {e}; fix the value") from None
