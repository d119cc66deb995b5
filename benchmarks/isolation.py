"""Isolation from the trials: one model's latency alone, and while a real fine-tune runs, with and without pausing.

The search's own parts: the demo ResNet-20 (3 epochs on scikit-learn's digits, as `tests/conftest.py` trains it)
exported to ONNX, a fine-tune of it through the trial task (`autocompress_trial`) in Ray on every core, and the
device actor from `place_device`, which pauses the trials on its node during each of its sessions. Measured in
rounds of three, seconds apart (this shared VM's speed drifts by a few percent over a minute, so figures taken
minutes apart would compare the drift):

- alone: the script holds the fine-tune stopped for the whole measurement, timed by an actor that pauses nothing
  itself (it would let the fine-tune run between sessions);
- during: the search's device, which pauses the fine-tune only within each session;
- unpaused: the actor that pauses nothing, with the fine-tune running: what a measurement without pausing reads.

Each round gives during / alone and unpaused / alone; the medians over the rounds are compared with 1 (interference
from outside hits either side of a round at random, a failed pause every "during" figure). At least `--min-pairs`
rounds, and up to `--max-pairs` until "alone" and "during" each have 3 figures not flagged `contended`. The
measurement times the model on every core, like the fine-tune: with one thread the scheduler mostly gives it a core
of its own and a failure to pause would go unseen. Results: benchmarks/isolation.md and benchmarks/isolation.json.

    python benchmarks/isolation.py [--min-pairs 6] [--max-pairs 12]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path

import ray
import torch

from autocompress.config import TrainConfig
from autocompress.cpus import machine_busy, other_load
from autocompress.pipeline.baseline import get_baseline
from autocompress.pipeline.export import export_onnx, fold_batchnorm
from autocompress.pipeline.trial import TrialSpec
from autocompress.runtime.cluster import place_device
from autocompress.runtime.device import Device, fingerprint, paused_trials, trial_pids
from autocompress.runtime.executor import autocompress_trial
from autocompress.tasks import load_dataset

HERE = Path(__file__).resolve().parent
SETTINGS = {"batch": 1, "threads": os.cpu_count(), "warmup": 20, "min_reps": 200, "max_reps": 3000,
            "ci_target": 0.01, "sessions": 3, "max_sessions": 5, "max_contended": 3, "burst_wait_s": 0,
            "max_seconds": 20.0}


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores the whole machine kept busy over the next `seconds` (this process sleeps meanwhile)."""
    before = machine_busy()
    time.sleep(seconds)
    load = other_load(before, machine_busy(), own_cpu_s=0.0, wall_s=seconds)
    return 0.0 if load is None else load


def wait_until_quiet(limit_s: float = 60.0) -> float:
    """Ray's own start-up (prestarted workers importing torch, new actors) must not land in the first figures."""
    deadline = time.time() + limit_s
    while (busy := busy_cores()) > 0.3 and time.time() < deadline:
        pass
    return busy


def _stat(pid: int) -> list[str]:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()


def own_trials() -> list[int]:
    """Trial workers of this script's Ray (their parent is the raylet this process started): other jobs on the
    machine may run trials of their own, which the device pauses too."""
    pids = []
    for pid in trial_pids():
        try:
            if int(_stat(int(_stat(pid)[1]))[1]) == os.getpid():
                pids.append(pid)
        except (OSError, ValueError, IndexError):
            pass
    return pids


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) the process has used so far."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(pid: int, measure) -> tuple[dict, float]:
    """A measurement, and the cores the fine-tune (`pid`) kept busy meanwhile."""
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    result = measure()
    return result, round((cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0), 2)


def rounds(device, apart, onnx_bytes: bytes, shape: tuple[int, ...], ref, min_pairs: int,
           max_pairs: int) -> list[dict]:
    out: list[dict] = []
    (pid,) = own_trials()

    def calm(side: str) -> int:
        return sum(not r[side]["contended"] for r in out)

    while len(out) < min_pairs or (len(out) < max_pairs and min(calm("alone"), calm("during")) < 3):
        with paused_trials() as held:
            if pid not in held:
                raise SystemExit("the fine-tune was not held for the 'alone' figure")
            time.sleep(0.5)
            alone, cores_alone = timed(pid, lambda: ray.get(apart.measure.remote(onnx_bytes, shape)))
        time.sleep(1.0)  # the fine-tune runs again
        during, cores_during = timed(pid, lambda: ray.get(device.measure.remote(onnx_bytes, shape)))
        time.sleep(1.0)
        unpaused, cores_unpaused = timed(pid, lambda: ray.get(apart.measure.remote(onnx_bytes, shape)))
        if ref in ray.wait([ref], timeout=0)[0]:
            raise SystemExit("the fine-tune ended before the measurements did")
        row = {"alone": alone, "during": during, "unpaused": unpaused, "held_by_script": len(held),
               "ratio": round(during["median_ms"] / alone["median_ms"], 4),
               "unpaused_ratio": round(unpaused["median_ms"] / alone["median_ms"], 4),
               "fine_tune_cores": {"alone": cores_alone, "during": cores_during, "unpaused": cores_unpaused}}
        out.append(row)
        print(table(out)[-1], flush=True)
    return out


def _flag(r: dict) -> str:
    return "yes" if r["contended"] else "no"


def _load(r: dict) -> str:
    return "?" if r["other_load_cores"] is None else f"{r['other_load_cores']:.2f}"


def table(rows: list[dict]) -> list[str]:
    lines = ["| pair | alone ms | during ms | during / alone | unpaused ms | unpaused / alone "
             "| contended (alone / during / unpaused) | fine-tune cores (alone / during / unpaused) "
             "| other load beside alone, cores | trials paused by the device |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        a, d, u, c = r["alone"], r["during"], r["unpaused"], r["fine_tune_cores"]
        lines.append(f"| {i} | {a['median_ms']:.4f} | {d['median_ms']:.4f} | {r['ratio']:.3f} | {u['median_ms']:.4f} "
                     f"| {r['unpaused_ratio']:.3f} | {_flag(a)} / {_flag(d)} / {_flag(u)} "
                     f"| {c['alone']:.2f} / {c['during']:.2f} / {c['unpaused']:.2f} | {_load(a)} "
                     f"| {d['paused_trials']} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-pairs", type=int, default=6)
    ap.add_argument("--max-pairs", type=int, default=12)
    args = ap.parse_args()
    os.environ.setdefault("AUTOCOMPRESS_CACHE", str(HERE / "runs" / "cache"))
    started, t0, load_start = dt.datetime.now(), time.perf_counter(), os.getloadavg()

    torch.set_num_threads(2)
    digits = load_dataset("digits", input_size=32, seed=0)
    trained, _ = get_baseline(model_name="resnet20", splits=digits, settings=TrainConfig(epochs=3, lr=0.1), seed=0)
    m = copy.deepcopy(trained).eval()
    example = digits.val.images(1)
    fold_batchnorm(m, example)
    onnx_bytes = export_onnx(m, example).SerializeToString()
    shape = tuple(digits.input_shape)

    cores = os.cpu_count()
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        device, _ = place_device("local", SETTINGS)
        apart = Device.remote(SETTINGS, pause_trials=False)
        ray.get([a.fingerprint.remote() for a in (device, apart)])  # the actors are up before anything is timed
        base, data = ray.put(trained), ray.put(digits)
        quiet_before = wait_until_quiet()
        spec = TrialSpec({}, {}, TrainConfig(epochs=1000, lr=0.01), seed=0)  # far longer than the measurements
        ref = ray.remote(autocompress_trial).options(num_cpus=cores, max_retries=0).remote(base, data, spec, cores)
        deadline = time.time() + 120
        while not own_trials() and time.time() < deadline:
            time.sleep(0.2)
        if not own_trials():
            raise SystemExit("the fine-tune did not start")
        time.sleep(3)  # well into the fine-tune
        rows = rounds(device, apart, onnx_bytes, shape, ref, args.min_pairs, args.max_pairs)
        ray.cancel(ref, force=True)
    finally:
        ray.shutdown()

    load_end, seconds = os.getloadavg(), time.perf_counter() - t0
    med = statistics.median(r["ratio"] for r in rows)
    med_unpaused = statistics.median(r["unpaused_ratio"] for r in rows)
    host = fingerprint(1)
    command = "python benchmarks/isolation.py" + (f" --min-pairs {args.min_pairs}" if args.min_pairs != 6 else "") + (
        f" --max-pairs {args.max_pairs}" if args.max_pairs != 12 else "")
    foreign = max(r["during"]["paused_trials"] for r in rows) - 1
    alone_loads = [r["alone"]["other_load_cores"] for r in rows if r["alone"]["other_load_cores"] is not None]
    md = [f"# Isolation from the trials ({started:%Y-%m-%d %H:%M})", "",
          f"`{command}` on {host['cpu']} ({host['cores']} cores, ISA {', '.join(host['isa'])}), ONNX Runtime "
          f"{host['onnxruntime']}, {seconds:.0f} s.", "",
          f"The demo ResNet-20 (3 epochs on digits) as ONNX, batch 1, timed on {SETTINGS['threads']} threads "
          "(every core, like the fine-tune) with the settings below, in rounds of three figures seconds apart "
          f"while a fine-tune of the same model runs through the trial task in Ray on {cores} cores: *alone* "
          "with the fine-tune held stopped by the script for the whole measurement, timed by an actor that "
          "pauses nothing; *during* by the search's device actor, which pauses the fine-tune only within each "
          "session; *unpaused* by the actor that pauses nothing, with the fine-tune running. `contended`: the "
          "figure rests on a session taken beside other load after the retries ran out (a measurement beside "
          "the running fine-tune sees it as other load). *Fine-tune cores*: the CPU time the fine-tune's worker "
          "used during each measurement over its wall time (during: it runs in the gaps between sessions; alone "
          "above 0: something resumed it while the script held it, as another job's device does when it ends "
          "its own pause). *Other load beside alone*: cores busy with anything else during the kept sessions of "
          "the alone figure, the fine-tune being stopped then (other jobs on the machine). *Trials paused by "
          "the device*: the most trial processes at once; more than 1 means trials of other jobs on the machine "
          "were paused too.", "",
          f"Settings: `{json.dumps(SETTINGS)}`.", "", *table(rows), "",
          f"Median during / alone over {len(rows)} pairs: **{med:.3f}** (within 5% of 1: "
          f"{'yes' if abs(med - 1) <= 0.05 else 'no'}); median unpaused / alone: **{med_unpaused:.3f}**.", "",
          f"The machine: 1-minute load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end "
          f"({cores} cores); busy cores just before the fine-tune started {quiet_before:.2f}; other load beside the "
          f"alone figures {min(alone_loads, default=0):.2f}-{max(alone_loads, default=0):.2f} cores; the device "
          f"paused up to {max(foreign, 0)} trial(s) of other jobs besides this one's."
          + (" Other jobs were running on the machine during this run: figures from a quiet machine may differ."
             if foreign > 0 or max(alone_loads, default=0) > 0.3 else "")]
    (HERE / "isolation.md").write_text("\n".join(md) + "\n")
    (HERE / "isolation.json").write_text(json.dumps(
        {"command": command, "host": host, "date": f"{started:%Y-%m-%d %H:%M}", "seconds": round(seconds, 1),
         "settings": SETTINGS, "cores": cores, "load_avg_start": load_start, "load_avg_end": load_end,
         "busy_cores_before": round(quiet_before, 3), "median_ratio": med, "median_unpaused_ratio": med_unpaused,
         "pairs": rows}, indent=1) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
