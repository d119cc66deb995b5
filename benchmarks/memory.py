"""Peak resident memory of a search's driver and of its trial workers, with and without image caps.

Runs `autocompress search` on real data (Imagenette at 160 px, MNIST) once with `--max-images all` (every image of
every split) and once capped (CAPS: the defaults until the defaults became uncapped), and watches every process of
the search from outside: the kernel's high-water mark of resident memory (VmHWM in /proc/PID/status) of
  - the driver (the `autocompress` process itself),
  - each Ray worker that ran a trial (or the sensitivity scan), alone, and with the DataLoader processes it forked
    to decode images (the largest sum of their proportional set sizes at one poll: pages a fork shares with the
    worker counted once),
  - Ray's own services (raylet, GCS; listed, not the subject).
Each search is short (one trial, a fraction of an epoch of fine-tuning): memory depends on the data path, not on
how long it runs. The model is ResNet-18 (torchvision) for Imagenette and ResNet-20 for MNIST.

    python benchmarks/memory.py [--cases imagenette-all,imagenette-capped,mnist-all,mnist-capped]

Writes benchmarks/memory.md and memory.json (with the commands and the host's fingerprint).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from autocompress.runtime.device import fingerprint

HERE = Path(__file__).parent
DATA = HERE.parent.parent / "shared" / "data"
CAPS = "train=5000,calib=500,val=1000,test=1000"
# One short search per case: a baseline trained for a few steps, one trial of a tenth of an epoch.
COMMON = ["--budget", "1", "--no-progress", "--no-sensitivity", "--baselines", "fp32", "--confirm-rounds", "0",
          "--baseline-epochs", "0.05", "--finetune-epochs", "0.1"]
CASES = {
    "imagenette-all": ["--model", "resnet18", "--dataset", "imagefolder", "--data-dir",
                       str(DATA / "imagenette2-160"), "--input-size", "160", "--max-images", "all"],
    "imagenette-capped": ["--model", "resnet18", "--dataset", "imagefolder", "--data-dir",
                          str(DATA / "imagenette2-160"), "--input-size", "160", "--max-images", CAPS],
    "mnist-all": ["--model", "resnet20", "--dataset", "mnist", "--data-dir", str(DATA / "mnist"),
                  "--max-images", "all"],
    "mnist-capped": ["--model", "resnet20", "--dataset", "mnist", "--data-dir", str(DATA / "mnist"),
                     "--max-images", CAPS],
}


def _status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace").strip()


def _pss_kb(pid: int) -> int:
    """Proportional set size: pages shared by forked processes counted once among them (so a sum is honest)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def _tree(root: int) -> dict[int, int]:
    """pid -> parent pid of `root` and all its descendants."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parents[int(d)] = int(_status(int(d))["PPid"])
            except (OSError, KeyError, ValueError):
                continue
    tree, frontier = {root: 0}, [root]
    while frontier:
        p = frontier.pop()
        for c, pp in parents.items():
            if pp == p and c not in tree:
                tree[c] = p
                frontier.append(c)
    return tree


class Watch:
    """The largest VmHWM seen of each process of a tree, its parent, and every title it had."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak: dict[int, int] = {}
        self.parent: dict[int, int] = {}
        self.titles: dict[int, set[str]] = {}
        self.family: dict[int, int] = {}  # pid -> largest PSS kB of it and its children alive at one poll

    def poll(self) -> None:
        rss: dict[int, int] = {}
        for pid, ppid in _tree(self.root).items():
            try:
                status = _status(pid)
                hwm, rss[pid] = int(status["VmHWM"].split()[0]), _pss_kb(pid)  # kB
                title = _cmdline(pid)
            except (OSError, KeyError, ValueError, IndexError):
                continue
            self.peak[pid] = max(self.peak.get(pid, 0), hwm)
            self.parent[pid] = ppid
            self.titles.setdefault(pid, set()).add(title.split(" ")[0] if title.startswith("ray::") else title[:80])
        for pid, kb in rss.items():
            together = kb + sum(v for c, v in rss.items() if self.parent.get(c) == pid)
            self.family[pid] = max(self.family.get(pid, 0), together)

    def summary(self) -> dict:
        ran = {p for p, t in self.titles.items()
               if any(x.startswith(("ray::autocompress_trial", "ray::_scan_task", "ray::_baseline_task")) for x in t)}
        # a DataLoader process forked by a worker keeps the worker's title: a worker's parent is no worker
        workers = [p for p in ran if self.parent.get(p) not in ran]
        readers = {w: [p for p, pp in self.parent.items() if pp == w] for w in workers}
        mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
        return {
            "driver_mb": mb(self.peak.get(self.root, 0)),
            "trial_workers": [{"worker_mb": mb(self.peak[w]), "reader_processes_seen": len(readers[w]),
                               "largest_reader_mb": mb(max((self.peak[r] for r in readers[w]), default=0)),
                               "worker_plus_readers_mb": mb(self.family.get(w, 0))}
                              for w in workers],
            "ray_services_mb": {next(iter(t))[:40]: mb(self.peak[p]) for p, t in self.titles.items()
                                if p != self.root and p not in workers and self.parent.get(p) not in workers
                                and not any(x.startswith("ray::") for x in t)},
            "other_ray_workers_mb": {f"{p} {sorted(t)[-1][:40]}": mb(self.peak[p]) for p, t in self.titles.items()
                                     if p not in workers and self.parent.get(p) not in ran and p not in ran
                                     and any(x.startswith("ray::") for x in t)},
        }


def run_case(name: str, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "autocompress.cli", "search", "--out", str(out), *CASES[name], *COMMON]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch = Watch(proc.pid)
    while proc.poll() is None:
        watch.poll()
        time.sleep(0.5)
    log = proc.stdout.read() if proc.stdout else ""
    meta = json.loads((out / "meta.json").read_text()) if (out / "meta.json").is_file() else {}
    return {"case": name, "command": "autocompress " + " ".join(cmd[3:]), "exit": proc.returncode,
            "seconds": round(time.perf_counter() - t0, 1), "splits": meta.get("splits"),
            "status": meta.get("status"), **watch.summary(), "log_tail": log.strip().splitlines()[-3:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    os.environ.setdefault("AUTOCOMPRESS_CACHE", str(HERE / "runs" / "cache"))
    rows = [run_case(c, HERE / "runs" / f"memory-{c}") for c in args.cases.split(",")]
    fp = fingerprint(1)
    lines = [f"# Peak resident memory of a search ({dt.date.today()})", "",
             f"`python benchmarks/memory.py --cases {args.cases}` on {fp['cpu']} ({', '.join(fp['isa'])}), "
             f"{os.cpu_count()} cores. Kernel high-water marks (VmHWM) of each process, polled every 0.5 s. One "
             "trial per search (ResNet-18 on Imagenette at 160 px, ResNet-20 on MNIST at 32 px; a tenth of an epoch "
             "of fine-tuning, no sensitivity scan, the FP32 baseline only). Targets: driver < 1.5 GB, trial worker "
             "< 3 GB.", "",
             "| case | images (train/calib/val/test) | exit | driver MB | trial worker MB | + its readers MB | s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        sizes = "/".join(str(r["splits"][k]) for k in ("train", "calib", "val", "test")) if r["splits"] else "?"
        worst = max(r["trial_workers"], key=lambda w: w["worker_mb"], default=None)
        lines.append(f"| {r['case']} | {sizes} | {r['exit']} | {r['driver_mb']} | "
                     f"{worst['worker_mb'] if worst else '-'} | "
                     f"{worst['worker_plus_readers_mb'] if worst else '-'} | {r['seconds']} |")
    lines += ["", "Commands:", ""] + [f"- {r['case']}: `{r['command']}`" for r in rows]
    (HERE / "memory.md").write_text("\n".join(lines) + "\n")
    (HERE / "memory.json").write_text(json.dumps({"date": str(dt.date.today()), "host": fp, "rows": rows},
                                                 indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
