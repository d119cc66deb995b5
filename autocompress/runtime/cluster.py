"""Ray: joining or starting it, checking the address and the device, placing the measuring actor."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Callable, Iterator

from autocompress.cpus import usable_cpus
from autocompress.errors import ClusterError, describe_error

__all__ = ["ray_session", "init_ray", "check_ray_address", "check_device", "place_device"]


def check_ray_address(address: str) -> None:
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray-address {address!r} is not HOST:PORT; "
                           "use the address `ray start --head` printed, e.g. 127.0.0.1:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as e:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address} ({e.strerror or e}); "
            "start one with `ray start --head` or drop --ray-address to use a local Ray"
        ) from None


def check_device(name: str) -> None:
    import ray

    if name != "local" and ray.cluster_resources().get(name, 0) < 1:
        have = sorted(k for k in ray.cluster_resources()
                      if k not in ("CPU", "GPU", "memory", "object_store_memory") and not k.startswith("node:"))
        raise ClusterError(f"--device {name!r}: no node of the Ray cluster carries the resource {name!r} "
                           f"(custom resources: {', '.join(have) or 'none'}); "
                           "join the device with `ray start --address=HEAD --num-cpus=0 "
                           f"--resources='{{\"{name}\": 1}}'` or use --device local")


def place_device(name: str, settings: dict):
    """The measuring actor, on the driver's node (`local`) or on the node carrying the resource `name`, and
    the fingerprint of the machine it runs on."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from autocompress.runtime.device import Device

    if name == "local":
        opts = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(),
                                                                      soft=False)}
    else:
        opts = {"resources": {name: 1}}  # the whole device: one search measures on it at a time
    device = Device.options(**opts).remote(settings)
    try:
        fp = ray.get(device.fingerprint.remote(), timeout=120)
    except ray.exceptions.GetTimeoutError:
        ray.kill(device)
        raise ClusterError(f"--device {name!r} did not start within 120 s: another search is measuring on it; "
                           "wait for that search or use another device") from None
    return device, fp


@contextlib.contextmanager
def ray_session(address: str | None, log: Callable[[str], None] = print, *,
                num_cpus: int | None = None) -> Iterator[None]:
    """Ray for one search, left as it was found: joined or started here (a local one with `num_cpus`, default the
    usable CPUs), and a Ray this search started is shut down at the end (no processes stay behind in the caller's
    Python session); one already running stays up."""
    import ray

    started = not ray.is_initialized()
    init_ray(address, log, num_cpus=num_cpus)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _other_cluster() -> str | None:
    """A cluster Ray's default start would join instead of starting one: RAY_ADDRESS, or the file a `ray start
    --head` leaves (and an unclean end leaves stale)."""
    if os.environ.get("RAY_ADDRESS"):
        return f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
    try:
        from ray._private.services import find_bootstrap_address

        found = find_bootstrap_address(None)
    except Exception:  # noqa: BLE001 - a Ray without this helper: nothing to say
        return None
    return f"the cluster file of `ray start` ({found})" if found else None


def init_ray(address: str | None, log: Callable[[str], None] = print, *, num_cpus: int | None = None) -> None:
    """Join the cluster at `address`; without one, start a local Ray of this search's own, whatever RAY_ADDRESS or a
    (possibly stale) cluster file of `ray start` say: a search joins a cluster only when asked to."""
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
            other = _other_cluster()
            if other:
                log(f"  starting a local Ray for this search; {other} is ignored (join a cluster with --ray-address)")
            ray.init(address="local", num_cpus=num_cpus or usable_cpus(), **kwargs)
    except Exception as e:  # noqa: BLE001
        hint = ("check --ray-address, and that this machine has the cluster's token "
                "(~/.ray/auth_token or RAY_AUTH_TOKEN)"
                if address else "run `ray stop` and retry")
        raise ClusterError(f"cannot {'join' if address else 'start'} Ray ({describe_error(e)}); {hint}") from None
