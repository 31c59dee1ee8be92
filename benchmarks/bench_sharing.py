"""Shared encoder weights: N MiniLM tenants in a small budget, with and without sharing.

Needs a store built by ``tenantserve fleet build --kind minilm`` (tenants declare the encoder
as a shared ``base``). The script

1. derives a second store whose tenants are single self-contained graphs (the same heads merged
   into the encoder, no ``base``): what every tenant costs without sharing;
2. serves the shared store with ``--memory-budget`` and calls every tenant once: resident
   models, bytes counted, process RSS over its baseline, cold load of a tenant whose encoder is
   resident against the first (full) load;
3. checks a sample of tenants: served scores equal the same artifact run alone, in-process;
4. replays one Zipf trace against each store (same budget): hit ratio, loads, p50/p99.

Prints Markdown. Loopback only; bounded in requests and time.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import psutil
from onnx import numpy_helper

from tenantserve.runtimes import default_runtimes, runtime_for
from tenantserve.store.manifest import checked_manifest
from tenantserve.tools.bench.servers import served_tenantserve
from tenantserve.tools.fleet import minilm

TICKET = "I lost my card and need to block it right away"


def merged_store(shared: Path, merged: Path) -> list[str]:
    """Copy ``shared`` with each tenant's head merged into the encoder (no ``base``)."""
    ids = sorted(str(p.parent.relative_to(shared)) for p in shared.glob("*/*/model.json"))
    encoder_model: Any = None
    for model_id in ids:
        src, dst = shared / model_id, merged / model_id
        if (dst / "model.json").is_file():
            continue
        manifest = json.loads((src / "model.json").read_text())
        if encoder_model is None:
            encoder_model = onnx.load(str(src / manifest["base"]["model_file"]))
        head_graph = onnx.load(str(src / "model.onnx")).graph
        weights = {t.name: numpy_helper.to_array(t) for t in head_graph.initializer}
        head = minilm.Head(
            weights["tenantserve_head/weights"], weights["tenantserve_head/bias"],
            tuple(manifest["labels"]),
        )  # fmt: skip
        data = minilm.merge_head(encoder_model, head)
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "model.onnx").write_bytes(data)
        shutil.copy(src / "tokenizer.json", tmp / "tokenizer.json")
        del manifest["base"]
        manifest.pop("sha256", None)
        manifest["memory_hint_bytes"] = 100 * 1024**2
        (tmp / "model.json").write_text(json.dumps(manifest))
        tmp.rename(dst)
    return ids


def infer(client: httpx.Client, model_id: str, text: str = TICKET) -> tuple[float, Any]:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [text]}]}
    started = time.perf_counter()
    response = client.post(f"/v2/models/{model_id}/infer", json=body, timeout=300)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    return elapsed, (outputs["macros"], outputs["scores"])


def metrics(client: httpx.Client) -> dict[str, float]:
    values = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("tenantserve_") and "{" not in line:
            name, value = line.split(" ", 1)
            values[name] = float(value)
    return values


def alone(folder: Path) -> Any:
    """The artifact served alone: a fresh runtime, nothing shared with anything."""
    manifest = checked_manifest(folder, "model")
    model = runtime_for(default_runtimes(), manifest).load(folder, manifest)
    out = model.predict({"text": np.array([[TICKET]], dtype=object)})
    model.close()
    return list(out["macros"][0]), [float(s) for s in out["scores"][0]]


def zipf_run(url: str, ids: list[str], requests: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    order = ids[:]
    rng.shuffle(order)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(order))]
    stream = rng.choices(order, weights=weights, k=requests)
    latencies = []
    with httpx.Client(base_url=url) as client:
        before = metrics(client)
        for model_id in stream:
            latencies.append(infer(client, model_id)[0])
        after = metrics(client)
    hits = (
        after["tenantserve_model_cache_hits_total"] - before["tenantserve_model_cache_hits_total"]
    )
    latencies.sort()
    return {
        "hit_ratio": hits / requests,
        "loads": after["tenantserve_model_loading_seconds_count"]
        - before["tenantserve_model_loading_seconds_count"],
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(0.99 * len(latencies))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True, help="a minilm fleet (shared base)")
    parser.add_argument("--merged-store", type=Path, help="where to derive the no-sharing copy")
    parser.add_argument("--budget", default="2GiB")
    parser.add_argument("--sample", type=int, default=50, help="tenants checked against alone")
    parser.add_argument("--requests", type=int, default=2000, help="Zipf requests per store")
    args = parser.parse_args()
    work = Path(args.store).parent / "bench-sharing"
    work.mkdir(exist_ok=True)
    ids = sorted(str(p.parent.relative_to(args.store)) for p in args.store.glob("*/*/model.json"))

    print(f"# Shared encoder: {len(ids)} MiniLM tenants, budget {args.budget}\n")
    with served_tenantserve(
        args.store, budget=args.budget, log_path=work / "shared.log", cache_dir=work / "cache"
    ) as served_by:
        url = served_by.url
        server = psutil.Process(served_by.pid)
        with httpx.Client(base_url=url) as client:
            baseline = server.memory_info().rss
            first_s, _ = infer(client, ids[0])
            cold = [infer(client, model_id)[0] for model_id in ids[1:]]
            rss = server.memory_info().rss
            m = metrics(client)
            served = {model_id: infer(client, model_id)[1] for model_id in ids[: args.sample]}
        print("| figure | value |\n|---|---:|")
        print(f"| tenants called once | {len(ids)} |")
        print(f"| resident after | {m['tenantserve_loaded_models']:.0f} |")
        print(f"| bytes counted (ledger) | {m['tenantserve_memory_used_bytes'] / 2**20:.0f} MiB |")
        shared_mib = m["tenantserve_memory_shared_bytes"] / 2**20
        print(f"| of which shared (counted once) | {shared_mib:.0f} MiB |")
        print(f"| sharing ratio | {m['tenantserve_memory_sharing_ratio']:.1f} |")
        print(f"| process RSS over baseline | {(rss - baseline) / 2**20:.0f} MiB |")
        print(f"| first call, encoder loaded too | {first_s * 1000:.0f} ms |")
        print(
            f"| first call, encoder resident (median) | {statistics.median(cold) * 1000:.1f} ms |"
        )
        worst = 0.0
        same_top = 0
        for model_id in ids[: args.sample]:
            macros, scores = alone(args.store / model_id)
            got_macros, got_scores = served[model_id]
            # OIP data is flat: a [1, k] output comes back as k values.
            same_top += got_macros[0] == macros[0]
            worst = max(worst, float(np.max(np.abs(np.array(got_scores) - np.array(scores)))))
        print(f"| same top macro as served alone | {same_top}/{args.sample} |")
        print(f"| largest score difference vs alone | {worst:.1e} |\n")
        shared_zipf = zipf_run(url, ids, args.requests, seed=1)

    merged = args.merged_store or work / "merged-store"
    merged_store(args.store, merged)
    with served_tenantserve(
        merged, budget=args.budget, log_path=work / "merged.log", cache_dir=work / "cache"
    ) as served_by:
        merged_zipf = zipf_run(served_by.url, ids, args.requests, seed=1)
    print(f"Zipf s=1.1 over {len(ids)} tenants, {args.requests} sequential requests, same trace:\n")
    print("| store | hit ratio | loads | p50 ms | p99 ms |\n|---|---:|---:|---:|---:|")
    for name, row in (("shared encoder", shared_zipf), ("one graph per tenant", merged_zipf)):
        print(f"| {name} | {row['hit_ratio']:.3f} | {row['loads']:.0f} | "
              f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
