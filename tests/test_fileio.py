"""Atomic writes (autocompress/fileio.py) and the caches that use them."""

from __future__ import annotations

import os

import pytest

from autocompress.fileio import atomic_write_bytes, atomic_write_text


def test_atomic_writes_create_parents_replace_the_file_and_leave_no_temporaries(tmp_path):
    path = tmp_path / "a" / "b" / "c.json"
    atomic_write_text(path, "one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two" and os.listdir(path.parent) == ["c.json"]
    with pytest.raises(TypeError):  # a write that fails half-way leaves the old file, and no temporary
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"two" and os.listdir(path.parent) == ["c.json"]


def test_the_sensitivity_cache_computes_once_and_reads_the_file_after(tmp_path):
    from autocompress.space.sensitivity import cached_scan

    calls = []

    def compute():
        calls.append(1)
        return {"base": 99.0, "prune": {}, "quant": {}}

    first, hit = cached_scan(tmp_path, "k1", compute)
    again, hit_again = cached_scan(tmp_path, "k1", compute)
    assert (hit, hit_again) == (False, True) and again == first and len(calls) == 1
    assert os.listdir(tmp_path / "sensitivity") == ["k1.json"]
