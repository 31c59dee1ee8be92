"""VersionTable: which version a request gets, read once, refreshed behind the requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tenantserve.cache.version_table import VersionTable
from tenantserve.errors import LoadFailed, ModelNotFound, StoreUnavailable
from tenantserve.store.versions import ModelVersions
from tenantserve.types import ModelId, ModelRef, ResolvedModel

MACROS = ModelId.parse("acme/macros")
PLAIN = ModelId.parse("acme/plain")


class Store:
    """What the store's ``versions`` answers, and how often it was asked."""

    def __init__(self) -> None:
        self.found: dict[ModelId, ModelVersions | None] = {MACROS: ModelVersions((1, 2))}
        self.reads: list[ModelId] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def read(self, model_id: ModelId) -> ModelVersions | None:
        self.reads.append(model_id)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.found.get(model_id)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _table(store: Store, clock: Clock, resident: set[ModelId] | None = None) -> VersionTable:
    held = resident if resident is not None else set()
    return VersionTable(store.read, held.__contains__, refresh_s=10.0, clock=clock)


async def _key(table: VersionTable, raw: str, version: str = "") -> str:
    return (await table.resolve(ModelRef.parse(raw, version))).key.value


@pytest.mark.anyio
async def test_names_resolve_to_versions_and_unversioned_models_to_themselves() -> None:
    store = Store()
    table = _table(store, Clock())
    assert await _key(table, "acme/macros") == "acme/macros/2"
    assert await _key(table, "acme/macros", "1") == "acme/macros/1"
    assert await _key(table, "acme/macros@1") == "acme/macros/1"
    assert await table.resolve(ModelRef(PLAIN)) == ResolvedModel.unversioned(PLAIN)
    assert store.reads == [MACROS, PLAIN]  # each folder read once
    with pytest.raises(ModelNotFound, match="has no version 3"):
        await _key(table, "acme/macros", "3")
    with pytest.raises(ModelNotFound, match="has no alias 'stable'"):
        await _key(table, "acme/plain@stable")


@pytest.mark.anyio
async def test_a_resident_unversioned_model_is_never_read() -> None:
    store = Store()
    table = _table(store, Clock(), resident={PLAIN})
    assert await _key(table, "acme/plain") == "acme/plain"
    assert await _key(table, "acme/plain", "1") == "acme/plain"
    assert store.reads == []


@pytest.mark.anyio
async def test_concurrent_first_requests_share_one_read() -> None:
    store = Store()
    store.gate = asyncio.Event()
    table = _table(store, Clock())
    waiting = [asyncio.ensure_future(_key(table, "acme/macros")) for _ in range(5)]
    await asyncio.sleep(0)
    store.gate.set()
    assert await asyncio.gather(*waiting) == ["acme/macros/2"] * 5
    assert store.reads == [MACROS]


async def _until(done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """The background re-read runs on a thread: wait for it, however busy the machine."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "the background re-read never ran"
        await asyncio.sleep(0.01)


async def _until_key(table: VersionTable, want: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (got := await _key(table, "acme/macros")) != want:
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_a_stale_entry_serves_while_it_is_read_again_behind_the_request() -> None:
    store, clock = Store(), Clock()
    table = _table(store, clock)
    assert await _key(table, "acme/macros") == "acme/macros/2"
    store.found[MACROS] = ModelVersions((1, 2, 3))
    clock.now = 5.0
    assert await _key(table, "acme/macros") == "acme/macros/2"
    assert len(store.reads) == 1  # fresh enough: not read again
    clock.now = 11.0
    # Past the period the answer is still the last read; the re-read runs behind it.
    assert await _key(table, "acme/macros") == "acme/macros/2"
    await _until(lambda: len(store.reads) == 2)
    await _until_key(table, "acme/macros/3")


@pytest.mark.anyio
async def test_a_failed_re_read_keeps_the_last_good_answer() -> None:
    store, clock = Store(), Clock()
    table = _table(store, clock)
    await _key(table, "acme/macros")
    store.fail = LoadFailed("aliases.json of model acme/macros is not valid JSON")
    clock.now = 11.0
    await _key(table, "acme/macros")
    await _until(lambda: len(store.reads) == 2)
    await asyncio.sleep(0.05)  # the failed re-read's answer is in (or never comes)
    assert await _key(table, "acme/macros") == "acme/macros/2"
    # A model never read before gets the error itself.
    store.fail = StoreUnavailable("the model store did not answer")
    with pytest.raises(StoreUnavailable):
        await _key(table, "acme/other")


@pytest.mark.anyio
async def test_promote_loads_first_then_moves_the_alias() -> None:
    store = Store()
    store.found[MACROS] = ModelVersions((1, 2), {"stable": 1})
    table = _table(store, Clock())
    pinned = await table.resolve(ModelRef.parse("acme/macros@1"))
    assert await _key(table, "acme/macros") == "acme/macros/1"
    loaded: list[str] = []

    async def load(target: ResolvedModel) -> None:
        loaded.append(target.key.value)

    promoted = await table.promote(MACROS, 2, prepare=load)
    assert (loaded, promoted.key.value) == (["acme/macros/2"], "acme/macros/2")
    assert await _key(table, "acme/macros") == "acme/macros/2"
    assert await _key(table, "acme/macros@stable") == "acme/macros/2"
    assert pinned.key.value == "acme/macros/1"  # resolved before: keeps its version
    assert await _key(table, "acme/macros", "1") == "acme/macros/1"


@pytest.mark.anyio
async def test_a_failed_promote_leaves_the_alias_where_it_was() -> None:
    store = Store()
    store.found[MACROS] = ModelVersions((1, 2), {"stable": 1})
    table = _table(store, Clock())

    async def fail(target: ResolvedModel) -> None:
        raise LoadFailed(f"model {target.key} did not load")

    with pytest.raises(LoadFailed):
        await table.promote(MACROS, 2, prepare=fail)
    assert await _key(table, "acme/macros") == "acme/macros/1"
    with pytest.raises(ModelNotFound, match=r"has no version 5 \(versions: 1, 2\)"):
        await table.promote(MACROS, 5)
    with pytest.raises(ModelNotFound, match="has no numbered version folders"):
        await table.promote(PLAIN, 1)


@pytest.mark.anyio
async def test_a_promoted_alias_wins_over_the_file_and_a_new_version_is_seen_fresh() -> None:
    store = Store()
    store.found[MACROS] = ModelVersions((1, 2), {"stable": 1})
    table = _table(store, Clock())
    await _key(table, "acme/macros")
    store.found[MACROS] = ModelVersions((1, 2, 3), {"stable": 1})
    await table.promote(MACROS, 3, alias="canary")  # read now: version 3 is found
    assert await _key(table, "acme/macros@canary") == "acme/macros/3"
    await table.promote(MACROS, 2)
    assert await _key(table, "acme/macros") == "acme/macros/2"


@pytest.mark.anyio
async def test_the_table_is_bounded() -> None:
    store = Store()
    table = VersionTable(store.read, lambda _: False, max_entries=2, clock=Clock())
    for name in ("a/x", "b/x", "c/x", "a/x"):
        await _key(table, name)
    assert [m.value for m in store.reads] == ["a/x", "b/x", "c/x", "a/x"]


@pytest.mark.anyio
async def test_it_says_which_models_it_knows_and_counts_a_tenants_first_reads() -> None:
    store, clock = Store(), Clock()
    table = _table(store, clock)
    store.gate = asyncio.Event()
    reads = [asyncio.ensure_future(_key(table, raw)) for raw in ("acme/macros", "acme/plain")]
    other = asyncio.ensure_future(_key(table, "other/m"))
    await asyncio.sleep(0.01)
    assert (table.first_reads("acme"), table.first_reads("other")) == (2, 1)
    assert not table.knows(MACROS)
    store.gate.set()
    await asyncio.gather(*reads, other)
    assert table.knows(MACROS)
    assert table.knows(PLAIN)
    assert table.first_reads("acme") == 0
    store.gate = asyncio.Event()
    clock.now = 11.0  # a re-read in the background is not a first read
    assert await _key(table, "acme/macros") == "acme/macros/2"
    await asyncio.sleep(0.01)
    assert len(store.reads) == 4  # the re-read is under way
    assert table.first_reads("acme") == 0
    store.gate.set()
    await asyncio.sleep(0.01)
