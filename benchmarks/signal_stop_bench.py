"""Seconds `niah run` takes to exit after a signal, and until its last llama-server is gone, at each
stage: while two servers load, in the first prefill (two servers), while a primer streams (the
qwen35 test bed), while the 1M-token prompt is built and counted (the 1M rehearsal model), and
after a SIGKILL in the first prefill. The servers run as they are (not frozen), so the numbers are
what a user waits.

Measures this checkout, or another one with --repo (a `git worktree` of an older commit), so the
stop can be compared before and after a change. Nothing is asserted.

    python benchmarks/signal_stop_bench.py [--repo PATH] [--stages load,prefill,primer,count,killed] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SIGNALS = {"load": signal.SIGTERM, "prefill": signal.SIGHUP, "primer": signal.SIGINT, "count": signal.SIGTERM,
           "killed": signal.SIGKILL}
"""The signal each stage gets; `killed` is the first prefill again, with SIGKILL (niah cannot unwind)."""


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def logs(out: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(out.glob("logs/*.log")))


def stage_run(stage: str, work: Path) -> tuple[list[str], Callable[[int, Path], bool]]:
    """`niah run` arguments for `stage`, and the test that niah (pid) has reached it."""
    from niah.launch.server import find_tiny_model
    from niah.testbed.model import build_testbed

    tiny = ["--model", str(find_tiny_model()), "--profile", "tiny-native-8k", "--servers", "2"]
    if stage == "load":
        return [*tiny, "--lengths", "8000"], lambda pid, out: len(children(pid)) == 2
    if stage in ("prefill", "killed"):
        return [*tiny, "--lengths", "8000"], lambda pid, out: "processing task" in logs(out)
    if stage == "primer":
        model, _ = build_testbed("qwen35", work / "qwen35.gguf")
        (work / "hybrid.toml").write_text("context = 8192\n")
        return (["--model", str(model), "--profile", str(work / "hybrid.toml"), "--lengths", "8000"],
                lambda pid, out: "processing task" in logs(out))
    model, _ = build_testbed("qwen35", work / "rehearsal.gguf", layers=4, context=262144, heads=1, kv_heads=1,
                             head_dim=64)
    results = work / "run" / "results.jsonl"
    return (["--model", str(model), "--profile", "yarn-1m", "--lengths", "1010000"],
            lambda pid, out: results.exists() and '"record": "facts"' in results.read_text())


GIVE_UP_S = 300.0


def measure(repo: Path, stage: str) -> tuple[float, float | None, float | None]:
    """(seconds to reach the stage, to niah's exit after the signal, to the last server gone); None
    where that took more than GIVE_UP_S (then niah, or the servers left, are killed)."""
    with tempfile.TemporaryDirectory(prefix="niah-stop-") as tmp:
        work = Path(tmp)
        args, reached = stage_run(stage, work)
        out = work / "run"
        argv = [sys.executable, "-m", "niah", "run", *args, "--depths", "0,50,100", "--out", str(out),
                "--no-progress"]
        started = time.monotonic()
        niah = subprocess.Popen(argv, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(repo)})
        try:
            while not reached(niah.pid, out):
                if niah.poll() is not None:
                    raise SystemExit(f"niah ended before the {stage} stage")
                time.sleep(0.02)
            servers = children(niah.pid)
            at = time.monotonic()
            niah.send_signal(SIGNALS[stage])
            try:
                niah.wait(timeout=GIVE_UP_S)
                exited: float | None = time.monotonic() - at
            except subprocess.TimeoutExpired:
                exited = None
                niah.kill()
            while any(alive(s) for s in servers) and time.monotonic() - at < GIVE_UP_S:
                time.sleep(0.02)
            left = [s for s in servers if alive(s)]
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            return at - started, exited, None if left else time.monotonic() - at
        finally:
            if niah.poll() is None:
                niah.kill()
                niah.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--stages", default="load,prefill,primer,count,killed")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    print(f"checkout: {args.repo.resolve()}  load average: {os.getloadavg()[0]:.1f}")
    for stage in args.stages.split(","):
        for _ in range(args.runs):
            reach, exited, gone = measure(args.repo.resolve(), stage)
            print(f"{stage:8s} {SIGNALS[stage].name:8s} reached after {reach:6.1f} s; niah exited after "
                  f"{seconds(exited)}, its last llama-server gone after {seconds(gone)} (from the signal)", flush=True)


def seconds(value: float | None) -> str:
    return f"{value:5.2f} s" if value is not None else f"more than {GIVE_UP_S:.0f} s"


if __name__ == "__main__":
    main()
