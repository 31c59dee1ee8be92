"""Loads at the speed of memory (issue #17): bare ONNX Runtime and the server, side by side.

    .venv/bin/python benchmarks/bench_loads.py [--models 40] [--compare-src /path/to/old/src]

1. Bare ONNX Runtime in this process, one thread, models interleaved (A B C D per model): a
   session from the ``.onnx`` file (ORT's defaults), the same without pre-packing, from the
   ORT-format file read into memory, and from it mapped (the server's options); medians.
2. The server (``tenantserve serve``), per size: a first call to each model, an explicit unload
   of each, a second call (a reload, its fast-load file now in the disk tier) and an unload
   again; load and unload times from its own histograms (tenantserve_model_loading_seconds and
   _unloading_seconds: sum / count), with ``--compare-src`` the same for another source tree.
3. Loads per second: first calls to distinct 16 kB models from 16 clients, for
   ``--max-concurrent-loads`` 1 and the cores, A B A B.
4. Memory: RSS per resident 10.56 MB model, each predicted once, against its file.
5. The allocator: 200 ``.onnx`` sessions of 10.56 MB loaded and closed, 8 at a time, in a fresh
   process each: RSS left with glibc's defaults and with fixed thresholds, and trims' cost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import psutil

from tenantserve.runtimes.ort_format import session_options
from tenantserve.tools.bench.servers import Served, served_tenantserve
from tenantserve.tools.fleet.synth import write_synthetic_model

SIZES = {"16 kB": 16_000, "10.56 MB": 10_560_000}
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
X = np.full((1, 16), 0.5, np.float32)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def bare(store: Path, models: int) -> dict[str, dict[str, float]]:
    """Median session time per way of loading, per size (this process, one thread)."""

    def onnx_default(folder: Path) -> ort.InferenceSession:
        return ort.InferenceSession(str(folder / "model.onnx"), session_options(prepack=True))

    def onnx_no_prepack(folder: Path) -> ort.InferenceSession:
        return ort.InferenceSession(str(folder / "model.onnx"), session_options(prepack=False))

    def ort_read(folder: Path) -> ort.InferenceSession:
        options = session_options(prepack=False)  # the fastest, read into memory
        options.add_session_config_entry("session.load_model_format", "ORT")
        options.add_session_config_entry("session.use_ort_model_bytes_for_initializers", "1")
        return ort.InferenceSession(str(folder / "model.ort"), options)

    def ort_mapped(folder: Path) -> ort.InferenceSession:
        return ort.InferenceSession(
            str(folder / "model.ort"), session_options(prepack=False, ort_file=True)
        )

    ways: dict[str, Callable[[Path], ort.InferenceSession]] = {
        ".onnx, ORT defaults": onnx_default, ".onnx, no pre-packing": onnx_no_prepack,
        "ORT format, read": ort_read, "ORT format, mapped (server)": ort_mapped,
    }  # fmt: skip
    onnx_default(store / "16 kB" / "m000").run(None, {"input": X})  # ORT's one-time set-up
    table: dict[str, dict[str, float]] = {}
    for size in SIZES:
        times: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(3):
            for i in range(models):
                folder = store / size / f"m{i:03d}"
                for way, make in ways.items():
                    started = time.perf_counter()
                    session = make(folder)
                    times[way].append(time.perf_counter() - started)
                    session.run(None, {"input": X})
                    del session
        table[size] = {way: statistics.median(values) for way, values in times.items()}
    return table


def _histogram(client: httpx.Client, name: str) -> tuple[float, float]:
    values = {"_sum": 0.0, "_count": 0.0}
    for line in client.get("/metrics").text.splitlines():
        for suffix in values:
            if line.startswith(f"{name}{suffix} "):
                values[suffix] = float(line.split()[-1])
    return values["_sum"], values["_count"]


@contextlib.contextmanager
def _server(store: Path, work: Path, src: Path | None, *flags: str) -> Iterator[Served]:
    with served_tenantserve(
        store, budget="3GiB", log_path=work / "server.log", cache_dir=work / "cache",
        extra_args=flags, src=src,
    ) as served:  # fmt: skip
        yield served


def server_loads(
    store: Path, work: Path, models: int, src: Path | None, *flags: str
) -> dict[str, float]:
    """Mean server-side load and unload seconds per size and round, and first-call latency."""
    out: dict[str, float] = {}
    with (
        _server(store, work, src, *flags) as served,
        httpx.Client(base_url=served.url, timeout=60) as c,
    ):
        for size in SIZES:
            ids = [f"{_slug(size)}/m{i:03d}" for i in range(models)]
            for round_ in ("cold", "reload", "reload again"):
                load0, unload0 = (_histogram(c, f"tenantserve_model_{k}_seconds")
                                  for k in ("loading", "unloading"))  # fmt: skip
                calls = []
                for model_id in ids:
                    started = time.perf_counter()
                    assert c.post(f"/v2/models/{model_id}/infer", json=BODY).status_code == 200
                    calls.append(time.perf_counter() - started)
                loads = [m["load_seconds"] for m in c.get("/v1/status").json()["models"]]
                for model_id in ids:
                    assert c.post(f"/v2/repository/models/{model_id}/unload").status_code == 200
                load1, unload1 = (_histogram(c, f"tenantserve_model_{k}_seconds")
                                  for k in ("loading", "unloading"))  # fmt: skip
                out[f"{size} {round_} load"] = (load1[0] - load0[0]) / (load1[1] - load0[1])
                out[f"{size} {round_} unload"] = (unload1[0] - unload0[0]) / (
                    unload1[1] - unload0[1]
                )
                out[f"{size} {round_} load, median"] = statistics.median(loads)
                out[f"{size} {round_} first call"] = statistics.median(calls)
    return out


def loads_per_second(
    store: Path, work: Path, ids: list[str], concurrent: int | None, src: Path | None = None
) -> tuple[float, float]:
    """First calls per second to ``ids`` (each its own tenant) from 16 clients: on a server
    that never saw them (its disk tier empty: each first fetch copies the model in), then again
    after every one was unloaded (a reload from the disk tier, as a cache that evicts pays)."""
    flags = () if concurrent is None else ("--max-concurrent-loads", str(concurrent))
    rates = []
    with (
        _server(store, work, src, *flags) as served,
        httpx.Client(base_url=served.url, timeout=60) as client,
        ThreadPoolExecutor(16) as pool,
    ):
        for _ in ("cold", "reload"):
            started = time.perf_counter()
            codes = list(pool.map(
                lambda m: client.post(f"/v2/models/{m}/infer", json=BODY).status_code, ids
            ))  # fmt: skip
            rates.append(len(ids) / (time.perf_counter() - started))
            assert codes == [200] * len(ids), sorted(set(codes))
            for model_id in ids:
                client.post(f"/v2/repository/models/{model_id}/unload").raise_for_status()
    return rates[0], rates[1]


def resident_memory(store: Path, work: Path, models: int) -> tuple[float, float]:
    """(RSS growth, ledger) per resident 10.56 MB model, each predicted once."""
    ids = [f"{_slug('10.56 MB')}/m{i:03d}" for i in range(models)]
    with _server(store, work, None) as served, httpx.Client(base_url=served.url, timeout=60) as c:
        process = psutil.Process(served.pid)
        before = process.memory_info().rss
        for model_id in ids:
            assert c.post(f"/v2/models/{model_id}/infer", json=BODY).status_code == 200
        grown = process.memory_info().rss - before
        ledger = float(
            next(line for line in c.get("/metrics").text.splitlines()
                 if line.startswith("tenantserve_memory_used_bytes ")).split()[-1]
        )  # fmt: skip
    return grown / models, ledger / models


_ALLOCATOR = """
import ctypes, sys, time, psutil, numpy as np, onnxruntime as ort
from tenantserve import memory
from tenantserve.runtimes.ort_format import session_options
if sys.argv[2] == "fixed":
    memory.return_freed_memory()
x = np.full((1, 16), 0.5, np.float32)
def load(i):
    path = f"{sys.argv[1]}/m{i % int(sys.argv[3]):03d}/model.onnx"
    s = ort.InferenceSession(path, session_options(prepack=True))
    s.run(None, {"input": x}); return s
load(0); memory.trim(); base = psutil.Process().memory_info().rss
held = []
for i in range(200):
    held.append(load(i))
    if len(held) > 8:
        held.pop(0)
held.clear()
left = psutil.Process().memory_info().rss - base
started = time.perf_counter(); memory.trim(); took = time.perf_counter() - started
print(left, took)
"""


def allocator(folder: Path, models: int) -> dict[str, tuple[float, float]]:
    out = {}
    for mode in ("defaults", "fixed"):
        done = subprocess.run([sys.executable, "-c", _ALLOCATOR, str(folder), mode, str(models)],
                              capture_output=True, text=True, check=True)  # fmt: skip
        left, took = done.stdout.split()
        out[mode] = (float(left), float(took))
    return out


def _without_ort_files(store: Path, target: Path) -> Path:
    """A copy of ``store`` as published before ORT-format copies (which older servers refuse)."""
    for manifest in store.glob("*/*/model.json"):
        folder = target / manifest.parent.relative_to(store)
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes((manifest.parent / "model.onnx").read_bytes())
        fields = json.loads(manifest.read_text())
        fields.pop("ort_format", None)
        (folder / "model.json").write_text(json.dumps(fields))
    return target


def _slug(size: str) -> str:
    return "small" if size == "16 kB" else "big"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=40, help="models of each size")
    parser.add_argument("--storm-models", type=int, default=300)
    parser.add_argument("--compare-src", type=Path, help="another src/ to run the server from")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="tenantserve-loads-") as tmp:
        root, store = Path(tmp), Path(tmp) / "store"
        for size, nbytes in SIZES.items():
            for i in range(args.models):
                folder = write_synthetic_model(store / _slug(size) / f"m{i:03d}",
                                               size_bytes=nbytes, seed=i)  # fmt: skip
                bare_folder = root / "bare" / size / f"m{i:03d}"
                bare_folder.mkdir(parents=True)
                for name in ("model.onnx", "model.ort"):
                    (bare_folder / name).write_bytes((folder / name).read_bytes())
        for i in range(args.storm_models):
            write_synthetic_model(store / f"storm{i:04d}" / "m", size_bytes=16_000, seed=i)
        file_bytes = (store / "big" / "m000" / "model.ort").stat().st_size

        print(f"# Loads (issue #17)\n\nMachine: {cores} cores, ONNX Runtime {ort.__version__}; "
              f"{args.models} synthetic models of each size.\n")  # fmt: skip
        table = bare(root / "bare", args.models)
        print("## Bare ONNX Runtime: session time, median ms\n")
        print("| way | " + " | ".join(SIZES) + " |\n|---|" + "---:|" * len(SIZES))
        for way in table["16 kB"]:
            print(f"| {way} | " + " | ".join(_ms(table[s][way]) for s in SIZES) + " |")

        print("\n## Server: load and unload, ms: means from its histograms; medians of its "
              "models' load_seconds; the client's first call, median\n")  # fmt: skip
        runs = {
            "this tree": server_loads(store, root / "new", args.models, None),
            "--load-nice 0": server_loads(
                store, root / "new-0", args.models, None, "--load-nice", "0"
            ),
        }
        if args.compare_src is not None:
            runs[str(args.compare_src)] = server_loads(
                _without_ort_files(store, root / "old-store"), root / "old", args.models,
                args.compare_src,
            )  # fmt: skip
        print("| measure | " + " | ".join(runs) + " |\n|---|" + "---:|" * len(runs))
        for key in runs["this tree"]:
            print(f"| {key} | " + " | ".join(_ms(run[key]) for run in runs.values()) + " |")
        mapped = table["10.56 MB"]["ORT format, mapped (server)"]
        read = table["10.56 MB"]["ORT format, read"]
        for stat in ("load", "load, median"):
            took = runs["this tree"][f"10.56 MB reload again {stat}"]
            print(f"\n10.56 MB reload {stat} / bare ORT-format session: {took / mapped:.2f}x "
                  f"mapped, {took / read:.2f}x read.")  # fmt: skip
        print()

        print("## Loads per second: first calls from 16 clients, cold (disk tier empty) and "
              "reloaded (after an unload of each), A B A B\n")  # fmt: skip
        fleets = {
            f"{args.storm_models} x 16 kB": [f"storm{i:04d}/m" for i in range(args.storm_models)],
            f"{args.models} x 10.56 MB": [f"big/m{i:03d}" for i in range(args.models)],
        }
        before = ["" if args.compare_src is None else f"{args.compare_src}, its defaults"]
        heads = [f"{n} at once" for n in (1, cores)] + [b for b in before if b]
        print("| fleet | pass | " + " | ".join(heads) + " |")
        print("|---|---|" + "---:|" * len(heads))
        for fleet, ids in fleets.items():
            rates: dict[int | None, list[tuple[float, float]]] = {1: [], cores: []}
            if args.compare_src is not None:
                rates[None] = []
            for _ in range(2):
                for concurrent, seen in rates.items():
                    work = root / f"rate-{len(ids)}-{concurrent}-{len(seen)}"
                    if concurrent is None:
                        old = root / "old-store"  # written for the load table above
                        seen.append(loads_per_second(old, work, ids, None, args.compare_src))
                    else:
                        seen.append(loads_per_second(store, work, ids, concurrent))
            for index, name in enumerate(("cold", "reload")):
                shown = [", ".join(f"{v[index]:.0f}" for v in seen) for seen in rates.values()]
                print(f"| {fleet} | {name} | " + " | ".join(shown) + " |")

        grown, ledger = resident_memory(store, root / "memory", args.models)
        print(f"\n## Memory per resident 10.56 MB model (predicted once)\n\nRSS growth "
              f"{grown / 1e6:.2f} MB, ledger {ledger / 1e6:.2f} MB, ORT-format file "
              f"{file_bytes / 1e6:.2f} MB: {grown / file_bytes:.2f}x the file.\n")  # fmt: skip

        print("## Allocator: 200 .onnx sessions of 10.56 MB loaded and closed, 8 at a time\n")
        for mode, (left, took) in allocator(root / "bare" / "10.56 MB", args.models).items():
            print(f"- glibc {mode}: {left / 1e6:.1f} MB left resident after closing all; "
                  f"a malloc_trim then took {took * 1e3:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
