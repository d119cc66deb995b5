"""A search without --ray-address starts a Ray of its own: a stale `ray start` cluster file or RAY_ADDRESS is
ignored, and the log says so."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

_SCRIPT = """
import ray
from autocompress.runtime.cluster import ray_session
with ray_session(None, log=print):
    print("gcs", ray.get_runtime_context().gcs_address)
    print("cpus", int(ray.cluster_resources()["CPU"]))
"""


def _run(env_extra: dict[str, str], stale: str | None) -> str:
    # a short directory: Ray's socket paths must stay under the OS limit
    with tempfile.TemporaryDirectory(prefix="acr", dir="/tmp") as tmp:
        if stale is not None:
            os.makedirs(os.path.join(tmp, "ray"))
            with open(os.path.join(tmp, "ray", "ray_current_cluster"), "w") as f:
                f.write(stale)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=tmp, **env_extra)
        out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.parametrize(("env", "stale", "named"), [
    ({}, "127.0.0.1:1", "the cluster file of `ray start` (127.0.0.1:1)"),
    ({"RAY_ADDRESS": "127.0.0.1:1"}, None, "RAY_ADDRESS=127.0.0.1:1"),
], ids=["stale-cluster-file", "RAY_ADDRESS"])
def test_a_local_search_starts_its_own_ray_whatever_the_environment_says(env, stale, named):
    out = _run(env, stale)
    assert f"starting a local Ray for this search; {named} is ignored" in out
    gcs = next(line.split()[1] for line in out.splitlines() if line.startswith("gcs "))
    assert not gcs.endswith(":1")
    assert int(next(line.split()[1] for line in out.splitlines() if line.startswith("cpus "))) >= 1
