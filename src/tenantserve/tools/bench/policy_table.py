"""The eviction policy table: every policy's hit ratio on three reference traces at 1/8, 1/4
and 1/2 of the fleet's bytes, beside Belady's, as Markdown for benchmarks/RESULTS.md.

The traces are those of issue #17: Zipf s=1.1 (stable popularity), the same with its ranking
drawn afresh every 5,000 requests (popularity that moves), and a flatter Zipf s=0.8. Every
policy replays the same requests through the server's own cache (:mod:`.replay`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tenantserve.tools.bench.fleet_profile import FleetProfile, ModelCost
from tenantserve.tools.bench.replay import POLICIES, replay
from tenantserve.tools.bench.traces import generate

TRACES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("zipf", "zipf", {"s": 1.1}),
    ("shifting", "shifting", {"s": 1.1, "every": 5000}),
    ("flat", "zipf", {"s": 0.8}),
)
"""(label, trace kind, its parameters)."""
FRACTIONS = ((8, "1/8"), (4, "1/4"), (2, "1/2"))
"""(the budget divides the fleet's bytes by this, its label)."""
BASELINES = ("lru", "s3fifo", "sieve", "wtinylfu")
"""The online policies the default must at least match."""

# A synthetic fleet loads at the pace the benchmark suite's measured (about 28 loads a second
# of 10 MB models, eviction included): reload cost grows with size, as a profile scales it.
_LOAD_S_PER_BYTE = 3.5e-9

Ratios = dict[tuple[str, str, str], float]
"""Hit ratio by (policy, trace label, fraction label)."""


def synthetic_fleet(models: int, smallest: int, largest: int, seed: int) -> FleetProfile:
    """``models`` ids as ``tenantserve fleet synth`` names them, sizes uniform in
    ``[smallest, largest]`` bytes from ``seed``, loads proportional to size."""
    if models < 1 or not 0 < smallest <= largest:
        raise ValueError("a synthetic fleet needs at least one model and 0 < smallest <= largest")
    rng = random.Random(seed)
    sizes = [rng.randint(smallest, largest) for _ in range(models)]
    return FleetProfile(
        {f"tenant-{i:03d}/model-{i:04d}": ModelCost(n, n * _LOAD_S_PER_BYTE, 0.0)
         for i, n in enumerate(sizes)},
        measured=0,
    )  # fmt: skip


def hit_ratios(
    fleet: FleetProfile,
    *,
    rate: float,
    duration_s: float,
    seed: int,
    min_residency_s: float,
    on_replay: Callable[[str], None] | None = None,
) -> tuple[Ratios, dict[str, int]]:
    """Replay each reference trace at each fraction under every policy and Belady's.

    Returns the ratios and the number of requests of each trace.
    """
    ids = sorted(fleet.models)
    sizes = {m: c.resident_bytes for m, c in fleet.models.items()}
    loads = {m: c.load_s for m, c in fleet.models.items()}
    total = sum(sizes.values())
    ratios: Ratios = {}
    lengths: dict[str, int] = {}
    for label, kind, params in TRACES:
        made = generate(kind, ids, rate=rate, duration_s=duration_s, seed=seed, **params)
        requests = [(r.t_s, r.model_id) for r in made]
        lengths[label] = len(requests)
        for divisor, fraction in FRACTIONS:
            for policy in POLICIES:
                if on_replay is not None:
                    on_replay(f"{policy} on {label} at {fraction}")
                result = replay(
                    requests, sizes=sizes, budget_bytes=total // divisor, policy=policy,
                    load_seconds=loads, min_residency_s=min_residency_s,
                )  # fmt: skip
                ratios[policy, label, fraction] = result.hit_ratio
    return ratios, lengths


def markdown(ratios: Mapping[tuple[str, str, str], float], default: str) -> str:
    """The table: a row per policy (the default marked), the best baseline, then Belady's."""
    cells = [(label, fraction) for label, _, _ in TRACES for _, fraction in FRACTIONS]
    header = ["policy", *(f"{label} {fraction}" for label, fraction in cells)]

    def row(name: str, values: Sequence[float]) -> str:
        return "| " + " | ".join([name, *(f"{v:.4f}" for v in values)]) + " |"

    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(cells)]
    for policy in POLICIES:
        if policy == "belady":
            continue
        name = f"{policy} (default)" if policy == default else policy
        lines.append(row(name, [ratios[policy, *cell] for cell in cells]))
    best = [max(ratios[p, *cell] for p in BASELINES) for cell in cells]
    lines.append(row(f"best of {', '.join(BASELINES)}", best))
    lines.append(row("belady (clairvoyant)", [ratios["belady", *cell] for cell in cells]))
    return "\n".join(lines) + "\n"


def default_matches(ratios: Mapping[tuple[str, str, str], float], default: str) -> bool:
    """Whether ``default`` at least matches the best baseline in every cell."""
    return all(
        ratios[default, label, fraction] >= max(ratios[p, label, fraction] for p in BASELINES)
        for label, _, _ in TRACES
        for _, fraction in FRACTIONS
    )
