"""What sessions keep after their runs: one shared arena against an arena per session.

Usage: ``python benchmarks/bench_arena.py --store STORE [--sessions 60] [--rows 8]``

``STORE`` is a fleet such as ``tenantserve bench suite`` builds (models with ``model.ort``).
Each way runs in a fresh process: ``--sessions`` sessions made with the server's options
(mapped ORT-format files, no pre-packing), one run of ``--rows`` rows on each, then runs of
one row. Printed per way: anonymous memory grown by the loads and by the runs (MiB, as the
cache reads it: ``tenantserve.memory.anon_bytes``), and the median one-row run.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import subprocess
import sys
import time

from tenantserve import memory


def _anon_mb() -> float:
    return memory.anon_bytes() / 2**20


def measure(store: str, way: str, sessions: int, rows: int) -> str:
    import numpy as np
    import onnxruntime as ort

    from tenantserve.runtimes.ort_format import session_options

    options = session_options(prepack=False, ort_file=True)
    if way == "own":  # ONNX Runtime's default: each session allocates from its own arena
        options.add_session_config_entry("session.use_env_allocators", "0")
    paths = sorted(glob.glob(f"{store}/*/*/model.ort"))[:sessions]
    base = _anon_mb()
    made = [ort.InferenceSession(p, options, providers=["CPUExecutionProvider"]) for p in paths]
    loaded = _anon_mb()
    name = made[0].get_inputs()[0].name
    width = made[0].get_inputs()[0].shape[1]
    for session in made:
        session.run(None, {name: np.zeros((rows, width), np.float32)})
    ran = _anon_mb()
    times = []
    for session in made:
        started = time.perf_counter()
        session.run(None, {name: np.zeros((1, width), np.float32)})
        times.append(time.perf_counter() - started)
    return (
        f"| {way} | {len(made)} | {loaded - base:.1f} | {ran - loaded:.1f} | "
        f"{(ran - loaded) / len(made):.2f} | {statistics.median(times) * 1e3:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--sessions", type=int, default=60)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--way", choices=("shared", "own"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way is not None:  # the child process of one way
        print(measure(args.store, args.way, args.sessions, args.rows))
        return
    print("| arena | sessions | loads MB | runs MB | runs MB a session | 1-row run ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for way in ("shared", "own"):
        command = [sys.executable, __file__, "--store", args.store, "--way", way]
        command += ["--sessions", str(args.sessions), "--rows", str(args.rows)]
        print(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
