"""The status document as rich renderables: the same picture as ``/ui``, in a terminal."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from tenantserve.tools.remote.records import Column, Records
from tenantserve.units import human_bytes as fmt_bytes

_BAR_WIDTH = 40
_SPARKS = " ▁▂▃▄▅▆▇█"
_KIND_STYLES = {
    "load": "blue",
    "evict": "yellow",
    "unload": "dim",
    "load_failed": "red",
    "rejected": "magenta",
}


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 0.001:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1000:.1f} ms"
    return f"{s:.2f} s"


def fmt_ago(now_s: float, then_s: float) -> str:
    ago = max(0.0, now_s - then_s)
    if ago < 1:
        return "now"
    if ago < 60:
        return f"{ago:.0f} s ago"
    if ago < 3600:
        return f"{ago // 60:.0f} min ago"
    return f"{ago // 3600:.0f} h ago"


def _span(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _range(window_s: float) -> str:
    """A hot list covers its current window and the one before: "5-10 min"."""
    if window_s >= 60:
        return f"{window_s / 60:.0f}-{2 * window_s / 60:.0f} min"
    return f"{window_s:.0f}-{2 * window_s:.0f} s"


def _pct(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f}%"


def budget_bar(memory: dict[str, Any], width: int = _BAR_WIDTH) -> Text:
    """``█`` pinned, ``█`` unpinned, ``█`` shared, ``░`` free — in the page's colours."""
    budget = max(1, memory["budget_bytes"])
    used = memory["used_bytes"]
    pinned = min(memory["pinned_bytes"], used)
    shared = min(memory["shared_bytes"], used - pinned)
    unpinned = max(0, used - pinned - shared)
    cells = [round(width * n / budget) for n in (pinned, unpinned, shared)]
    while sum(cells) > width:
        cells[cells.index(max(cells))] -= 1
    bar = Text()
    for count, style in zip(cells, ("magenta", "blue", "cyan"), strict=True):
        bar.append("█" * count, style=style)
    bar.append("░" * (width - sum(cells)), style="dim")
    return bar


def sparkline(values: list[int]) -> str:
    top = max(values, default=0)
    if top <= 0:
        return "·" * len(values)
    steps = len(_SPARKS) - 1
    return "".join(_SPARKS[round(steps * v / top)] if v else "·" for v in values)


def status_view(doc: dict[str, Any], *, url: str, limit: int = 20) -> RenderableType:
    """Header, memory, window summary, resident models, hottest, events."""
    now_s = doc["time_s"]
    memory = doc["memory"]
    window = doc["window"]
    totals = doc["totals"]
    span = _span(window["seconds"])

    header = Text()
    header.append("tenantserve ", style="bold")
    header.append(f"{doc['version']} at {url} · ")
    header.append(
        "ready" if doc["ready"] else "not ready", style="green" if doc["ready"] else "red"
    )
    header.append(f" · up {_span(now_s - doc['started_s'])}")
    store = doc.get("store")
    if store is not None and not store["ok"]:
        header.append(f"\nStore {store['url']}: {store['problem']}", style="red")

    mem = Text("Memory   ")
    mem.append_text(budget_bar(memory))
    share = memory["used_bytes"] / max(1, memory["budget_bytes"])
    mem.append(
        f"  {fmt_bytes(memory['used_bytes'])} of {fmt_bytes(memory['budget_bytes'])} "
        f"({share:.0%}) · pinned {fmt_bytes(memory['pinned_bytes'])} · shared "
        f"{fmt_bytes(memory['shared_bytes'])}"
    )

    traffic = Text(f"Last {span}: ")
    traffic.append(f"{window['requests']:,} requests", style="bold")
    traffic.append(
        f" · hit ratio {_pct(window['hit_ratio'])} · p50 {fmt_seconds(window['p50_s'])} · "
        f"p95 {fmt_seconds(window['p95_s'])} · p99 {fmt_seconds(window['p99_s'])} · "
        f"errors {window['errors']:,} · rejected {window['rejected']:,}"
    )
    points = doc["series"]["points"][-60:]
    spark = Text(f"Requests {sparkline([p['requests'] for p in points])}", style="green")
    churn = Text(
        f"Since start: {totals['requests']:,} requests · {totals['loads']:,} loads · "
        f"{totals['evictions']:,} evictions · {totals['unloads']:,} unloads · "
        f"{totals['load_failures']:,} failed loads",
        style="dim",
    )
    parts: list[RenderableType] = [header, mem, traffic, spark, churn, Text()]
    parts.append(models_table(doc, limit=limit))
    window_s = doc["hot"]["window_s"]
    parts += [
        Text(),
        _hot_table("Hottest models", doc["hot"]["models"], window_s),
        Text(),
        _hot_table("Hottest tenants", doc["hot"]["tenants"], window_s),
        Text(),
        events_table(doc["events"], limit=10),
    ]
    return Group(*parts)


def models_table(doc: dict[str, Any], *, limit: int | None = None) -> Records:
    models = doc["models"]
    now_s = doc["time_s"]
    shown = models if limit is None else models[:limit]
    title = f"Resident models ({doc['models_total']:,})"
    if len(shown) < doc["models_total"]:
        title += f" · {len(shown)} most recently used shown"
    records = Records(title, _MODEL_COLUMNS, empty="no model is resident yet")
    for model in shown:
        records.add(
            model["id"],
            fmt_bytes(model["bytes"]),
            Text("pinned", style="magenta") if model["pinned"] else Text(""),
            str(model["in_flight"]),
            f"{model['hits']:,}",
            fmt_ago(now_s, model["last_used_s"]),
            fmt_seconds(model["load_seconds"]),
        )
    return records


_MODEL_COLUMNS = (
    Column("Model"), Column("Size", "right"), Column("Pinned", "center"),
    Column("In flight", "right"), Column("Hits", "right"), Column("Last use", "right"),
    Column("Load", "right"),
)  # fmt: skip
_HOT_COLUMNS = (
    Column("Id"), Column("Requests", "right"), Column("Cold", "right"),
    Column("Rejected", "right"),
)  # fmt: skip
_EVENT_COLUMNS = (Column("Model"), Column("Time"), Column("Event"), Column("Detail"))


def _hot_table(title: str, entries: list[dict[str, Any]], window_s: float) -> Records:
    records = Records(f"{title} (last {_range(window_s)})", _HOT_COLUMNS, empty="no traffic yet")
    for entry in entries:
        approx = "≤" if entry["error_bound"] else ""
        records.add(
            entry["id"], f"{approx}{entry['requests']:,}", f"{entry['misses']:,}",
            f"{entry['rejected']:,}",
        )  # fmt: skip
    return records


def events_table(events: list[dict[str, Any]], *, limit: int) -> Records:
    records = Records("Recent events", _EVENT_COLUMNS, empty="nothing yet")
    for event in events[:limit]:
        kind = event["kind"]
        records.add(
            event["model"],
            time.strftime("%H:%M:%S", time.localtime(event["time_s"])),
            Text(kind.replace("_", " "), style=_KIND_STYLES.get(kind, "")),
            _describe(event),
        )
    return records


def _describe(event: dict[str, Any]) -> str:
    kind = event["kind"]
    if kind == "load":
        return f"{fmt_bytes(event['bytes'])} in {fmt_seconds(event['seconds'])}"
    if kind == "evict":
        return f"freed {fmt_bytes(event['bytes'])}"
    if kind == "unload":
        return f"released {fmt_bytes(event['bytes'])}"
    if kind == "rejected" and event["count"] > 1:
        return f"{event['detail']} (x{event['count']})"
    return str(event["detail"])


_TENANT_COLUMNS = (
    Column("Tenant"), Column("Models", "right"), Column("Memory", "right"),
    Column("In flight", "right"), Column("Requests", "right"), Column("Errors", "right"),
    Column("Rejected", "right"), Column("Last use", "right"), Column("Limits"),
)  # fmt: skip


def tenants_table(doc: dict[str, Any], *, now_s: float) -> Records:
    """``/v1/tenants`` as records: what each tenant holds, sent and may do."""
    records = Records(f"Tenants ({len(doc['tenants']):,})", _TENANT_COLUMNS, empty="no tenant yet")
    for row in doc["tenants"]:
        cap = row["memory_cap_bytes"]
        memory = fmt_bytes(row["bytes"]) + (f" of {fmt_bytes(cap)}" if cap is not None else "")
        last = row["last_request_s"]
        records.add(
            row["tenant"], str(row["models"]), memory, str(row["in_flight"]),
            f"{row['requests']:,}", f"{row['errors']:,}", f"{row['rejected']:,}",
            fmt_ago(now_s, last) if last is not None else "never", _limits(row["limits"]),
        )  # fmt: skip
    return records


def _limits(limits: dict[str, Any]) -> str:
    parts = []
    if limits["rate_per_s"]:
        parts.append(f"{limits['rate_per_s']:g}/s (burst {limits['burst']:g})")
    if limits["max_concurrent"]:
        parts.append(f"{limits['max_concurrent']} at once")
    return ", ".join(parts) or "none"


_INDEX_STATES = {"READY": "loaded", "LOADING": "loading"}


def index_table(entries: list[dict[str, Any]]) -> Records:
    """Every model in the store (``POST /v2/repository/index``) with its state here."""
    # A Version column only for a store that has numbered versions (docs/versions.md).
    versioned = any(str(entry.get("version", "1")) != "1" for entry in entries)
    columns = (Column("Model"), Column("Version"), Column("State"))
    records = Records("Models in the store", columns if versioned else columns[::2], empty="none")
    for entry in entries:
        state, reason = str(entry.get("state", "")), str(entry.get("reason", ""))
        # A model that is simply cold is "not loaded"; "unavailable" only with a reason.
        shown = _INDEX_STATES.get(state) or (f"unavailable: {reason}" if reason else "not loaded")
        version = (str(entry.get("version", "1")),) if versioned else ()
        records.add(str(entry.get("name", "")), *version, shown)
    return records
