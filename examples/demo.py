"""The tenantserve demo: support-desk tenants, each with its own ticket classifier, one server.

Builds a Banking77 classifier per tenant with the fleet builder (``tenantserve fleet build``'s
own code) into ./demo-store (once): 20 TF-IDF tenants by default, or with ``--kind minilm`` 5
MiniLM tenants (23 MB each, about a minute to build, the server tokenises) into
./demo-store-minilm. Then starts ``tenantserve serve`` on it, routes real tickets to several
tenants through both the KServe OIP v2 and the SageMaker protocol, shows each tenant's top
suggested macros with their scores, cold or warm, then the cache metrics and curl commands to
try. The server keeps running until Ctrl-C (``--no-wait`` stops it right away).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich import get_console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TimeElapsedColumn
from rich.table import Table

from tenantserve.tools.fleet.build import build_fleet
from tenantserve.tools.fleet.datasets import resolve_datasets
from tenantserve.tools.fleet.publish import open_publisher
from tenantserve.tools.fleet.sources import plan_banking77
from tenantserve.tools.fleet.text import Example, load_banking77

MODEL = "macros"
TENANTS_SHOWN = 4
TICKETS = 10
MACROS_SHOWN = 3


@dataclass(frozen=True)
class KindDefaults:
    """What the demo builds and serves for one kind of tenant model."""

    tenants: int
    store: Path
    memory_budget: str
    note: str


KINDS = {
    "tfidf": KindDefaults(20, Path("demo-store"), "256MiB", "a few seconds"),
    # A MiniLM encoder session holds about 93 MB: room for five even where each tenant holds
    # its own rather than sharing one.
    "minilm": KindDefaults(5, Path("demo-store-minilm"), "768MiB", "about a minute"),
}


class _Bars:
    """The fleet builder's progress stages as rich progress bars."""

    def __init__(self, bar: Progress) -> None:
        self._bar = bar
        self._tasks: dict[str, TaskID] = {}

    def begin(self, stage: str, total: int) -> None:
        self._tasks[stage] = self._bar.add_task(stage, total=total)

    def advance(self, stage: str, steps: int = 1) -> None:
        self._bar.advance(self._tasks[stage], steps)


def _built_as(folder: Path, kind: str) -> bool:
    # Reuse only artifacts of this kind that declare top-k macros: a store from an older demo
    # (no postprocess) or of the other kind is rebuilt.
    path = folder / "model.json"
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text())
    built_kind = str(manifest.get("metadata", {}).get("kind", ""))
    return "postprocess" in manifest and built_kind.startswith(kind)


def ensure_fleet(datasets: Path, store: Path, *, kind: str, tenants: int, seed: int) -> list[str]:
    """Build the tenants' classifiers unless every one is already in ``store``."""
    console = get_console()
    plans = plan_banking77(datasets, tenants=tenants, seed=seed)
    names = [plan.tenant for plan in plans]
    if all(_built_as(store / plan.model_id, kind) for plan in plans):
        console.print(
            f"[dim]{store} already holds {tenants} {kind} tenant classifiers; reusing them[/]"
        )
        return names
    console.print(f"building {tenants} {kind} tenant classifiers ({KINDS[kind].note})")
    started = time.perf_counter()
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    with bar:
        results = build_fleet(
            plans, kind=kind, publisher=open_publisher(str(store)), seed=seed, progress=_Bars(bar)
        )
    mean = sum(r.holdout_accuracy for r in results) / len(results)
    console.print(
        f"built {len(results)} classifiers in {time.perf_counter() - started:.1f} s; "
        f"mean held-out accuracy {mean:.1%} (Banking77 test rows of each tenant's intents)"
    )
    return names


@contextlib.contextmanager
def serve(store: Path, *, port: int, budget: str, log: Path) -> Iterator[str]:
    """Run ``tenantserve serve`` as a child process; yield its URL once ready, stop it after."""
    cmd = [sys.executable, "-m", "tenantserve", "serve", "--store", str(store),
           "--host", "127.0.0.1", "--port", str(port), "--memory-budget", budget]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    console = get_console()
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"server exited with {proc.returncode}; log {log}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"server not ready after 60 s; see {log}")
            time.sleep(0.1)
        console.print(f"server ready at {url} (pid {proc.pid}, log {log})")
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # uvicorn re-raises the SIGTERM it handled after a graceful shutdown: -15 is clean.
        clean = proc.returncode in (0, -signal.SIGTERM)
        console.print("server stopped" if clean else f"server exited with {proc.returncode}")


def build_request(protocol: str, model_id: str, text: str) -> tuple[str, dict[str, str], Any]:
    """Path, headers and JSON body asking ``model_id`` for one ticket's top macros."""
    if protocol == "OIP":
        body = {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [text]}],
            # The top-k outputs the manifest's postprocess step adds, not the raw probabilities.
            "outputs": [{"name": "macros"}, {"name": "scores"}],
        }
        return f"/v2/models/{model_id}/infer", {}, body
    headers = {"X-Amzn-SageMaker-Target-Model": model_id, "Content-Type": "application/json"}
    return "/invocations", headers, {"instances": [text]}


def parse_response(protocol: str, doc: Any) -> list[tuple[str, float]]:
    """The ticket's ranked macros with their scores, best first, from either protocol."""
    if protocol == "OIP":
        outputs = {out["name"]: out["data"] for out in doc["outputs"]}
        return [
            (str(m), float(s)) for m, s in zip(outputs["macros"], outputs["scores"], strict=True)
        ]
    return [(str(m["macro"]), float(m["score"])) for m in doc["predictions"][0]["macros"]]


def cache_counters(client: httpx.Client) -> dict[str, float]:
    """Sums of the tenantserve series in ``/metrics`` (labels summed away)."""
    totals: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("tenantserve_"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            with contextlib.suppress(ValueError):
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


Planned = tuple[str, list[str], Example]


def pick_tickets(test: list[Example], store: Path, names: list[str], seed: int) -> list[Planned]:
    """(tenant, labels, ticket) triples: a few tenants, several tickets each, repeats warm."""
    rng = random.Random(seed)
    chosen = rng.sample(names, min(TENANTS_SHOWN, len(names)))
    plan: list[Planned] = []
    for i in range(TICKETS):
        tenant = chosen[i % len(chosen)]
        labels = json.loads((store / tenant / MODEL / "model.json").read_text())["labels"]
        plan.append((tenant, labels, rng.choice([r for r in test if r.intent in set(labels)])))
    return plan


def run_demo(url: str, store: Path, names: list[str], datasets: Path, seed: int) -> Planned:
    """Send the tickets, print what each tenant suggests and the cache metrics; return one."""
    console = get_console()
    test = load_banking77(datasets / "banking77" / "test.csv")
    seen: set[str] = set()
    console.rule("Tickets routed to per-tenant classifiers")
    right = 0
    plan = pick_tickets(test, store, names, seed)
    with httpx.Client(base_url=url, timeout=60) as client:
        for i, (tenant, _labels, ticket) in enumerate(plan):
            protocol = "OIP" if i % 2 == 0 else "SageMaker"
            path, headers, body = build_request(protocol, f"{tenant}/{MODEL}", ticket.text)
            misses = cache_counters(client).get("tenantserve_model_cache_misses_total")
            started = time.perf_counter()
            response = client.post(path, headers=headers, json=body)
            elapsed_ms = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                head = f"{i + 1:2}. {tenant} via {protocol}: {response.status_code}"
                rows = [("ticket", ticket.text, ""), ("error", response.text, "")]
                console.print(_stanza(head, rows), highlight=False)
                continue
            ranked = parse_response(protocol, response.json())
            label, score = ranked[0]
            after = cache_counters(client).get("tenantserve_model_cache_misses_total")
            # The miss counter says whether this call loaded the model; without it, first seen.
            cold = tenant not in seen if misses is None or after is None else after > misses
            seen.add(tenant)
            right += label == ticket.intent
            mark = "[green]✓[/]" if label == ticket.intent else f"[red]✗ true: {ticket.intent}[/]"
            state = "[yellow]cold[/]" if cold else "[green]warm[/]"
            head = f"{i + 1:2}. {tenant} via {protocol}, {state}, {elapsed_ms:.1f} ms"
            others = ", ".join(f"{m} {s:.2f}" for m, s in ranked[1:MACROS_SHOWN])
            rows = [("ticket", ticket.text, ""), ("macro", f"{label} {score:.2f}", mark),
                    ("then", others, "")]  # fmt: skip
            console.print(_stanza(head, rows), highlight=False)
        console.print(f"\n{right}/{len(plan)} suggestions match the ticket's true intent\n")
        show_metrics(cache_counters(client))
    return plan[0]


def _stanza(head: str, rows: list[tuple[str, str, str]]) -> str:
    """One ticket: a heading, then label/value lines wrapped to the terminal (a log's is 80).

    Each row is (label, plain text, markup appended after it); the text is escaped, so a
    ticket's brackets print as written.
    """
    width = max(40, get_console().width)
    lines = [head]
    for label, value, markup in rows:
        wrapped = [escape(line) for line in textwrap.wrap(value, width - 11)] or [""]
        wrapped[-1] += f" {markup}" if markup else ""
        lines.append(f"    {label:<6} {wrapped[0]}")
        lines.extend(f"{'':11}{more}" for more in wrapped[1:])
    return "\n".join(lines)


def show_metrics(counters: dict[str, float]) -> None:
    table = Table(title="/metrics (cache)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    count = counters.get("tenantserve_model_loading_seconds_count", 0.0)
    total = counters.get("tenantserve_model_loading_seconds_sum", 0.0)
    rows = [
        ("cache hits", counters.get("tenantserve_model_cache_hits_total")),
        ("cache misses", counters.get("tenantserve_model_cache_misses_total")),
        ("models loaded now", counters.get("tenantserve_loaded_models")),
        ("load time sum (s)", total),
        ("load count", count),
        ("mean load (ms)", total / count * 1000 if count else None),
        ("memory used (MiB)", _mib(counters.get("tenantserve_memory_used_bytes"))),
        ("memory budget (MiB)", _mib(counters.get("tenantserve_memory_budget_bytes"))),
    ]
    for name, value in rows:
        table.add_row(name, "-" if value is None else f"{value:g}" if value % 1 else f"{value:.0f}")
    get_console().print(table)


def _mib(value: float | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def print_curls(url: str, model_id: str, text: str) -> None:
    console = get_console()
    console.print("\nTry it yourself:\n")
    for protocol in ("OIP", "SageMaker"):
        path, headers, body = build_request(protocol, model_id, text)
        parts = ["curl", "-s", "-X", "POST", f"{url}{path}"]
        for key, value in headers.items():
            parts += ["-H", f"{key}: {value}"]
        parts += ["-d", json.dumps(body)]
        console.print(" ".join(shlex.quote(p) for p in parts), soft_wrap=True, highlight=False)
    console.print(f"curl -s {url}/metrics | grep tenantserve_model_cache", highlight=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kind",
        choices=sorted(KINDS),
        default="tfidf",
        help="tfidf (default; builds in seconds) or minilm (5 MiniLM tenants, about a minute)",
    )
    parser.add_argument("--store", type=Path, help="default: demo-store[-minilm]")
    parser.add_argument(
        "--datasets", type=Path, help="folder holding banking77/ (default: the bundled copy)"
    )
    parser.add_argument("--tenants", type=int, help="default: 20 tfidf or 5 minilm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--memory-budget", help="default: 256MiB tfidf or 768MiB minilm")
    parser.add_argument("--no-wait", action="store_true", help="stop the server when done")
    args = parser.parse_args()
    # A SIGTERM (e.g. from a test harness) unwinds like Ctrl-C, so the server is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    defaults = KINDS[args.kind]
    datasets = resolve_datasets(args.datasets)
    store = (args.store or defaults.store).resolve()
    names = ensure_fleet(
        datasets, store, kind=args.kind, tenants=args.tenants or defaults.tenants, seed=args.seed
    )
    # Inside the store (a dot name is never a model id), so nothing is left beside it.
    log = store / ".server.log"
    budget = args.memory_budget or defaults.memory_budget
    with serve(store, port=args.port, budget=budget, log=log) as url:
        tenant, _labels, ticket = run_demo(url, store, names, datasets, args.seed)
        print_curls(url, f"{tenant}/{MODEL}", " ".join(ticket.text.split()))
        if not args.no_wait:
            get_console().print("\n[bold]server running; Ctrl-C stops it[/]")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)


if __name__ == "__main__":
    main()
