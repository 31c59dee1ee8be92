"""Which version each request gets: the store's versions and aliases, read once and kept.

A request names ``acme/macros`` (its default version: the ``stable`` alias, else the highest),
``acme/macros@2`` or ``/versions/2`` (that version), or ``acme/macros@canary`` (an alias);
:meth:`VersionTable.resolve` turns it into the version's own id, ``acme/macros/2``, which is
what the cache loads, leases and evicts: each version is its own entry. The table reads a
model's folder once and keeps what it found, re-reading it in the background every
``refresh_s`` (a request never waits for a re-read, and a store that fails one leaves the
last good answer serving). A model resident under its bare id is unversioned and is never
read at all, so the warm path of models without versions is unchanged.

Aliases set by :meth:`VersionTable.promote` (the management call) take precedence over
``aliases.json`` until the process ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from tenantserve.errors import ModelNotFound, TenantServeError
from tenantserve.store.versions import (
    DEFAULT_ALIAS,
    ModelVersions,
    choose,
    choose_unversioned,
)
from tenantserve.types import ModelId, ModelRef, ResolvedModel

log = logging.getLogger(__name__)

Reader = Callable[[ModelId], Coroutine[Any, Any, ModelVersions | None]]

DEFAULT_REFRESH_S = 10.0
DEFAULT_MAX_ENTRIES = 10_000


@dataclass(slots=True)
class _Entry:
    found: ModelVersions | None
    read_at: float


class VersionTable:
    """Resolves :class:`ModelRef` to :class:`ResolvedModel` (see the module). Event loop only."""

    def __init__(
        self,
        read: Reader,
        resident: Callable[[ModelId], bool],
        *,
        refresh_s: float = DEFAULT_REFRESH_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._resident = resident
        self._refresh_s = refresh_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[ModelId, _Entry] = OrderedDict()
        self._reads: dict[ModelId, asyncio.Task[ModelVersions | None]] = {}
        self._promoted: dict[ModelId, dict[str, int]] = {}
        self._refreshing: set[asyncio.Task[None]] = set()

    def knows(self, model_id: ModelId) -> bool:
        """Whether ``model_id``'s versions were read (resolving it needs no store trip)."""
        return model_id in self._entries

    def first_reads(self, tenant: str) -> int:
        """The tenant's models whose versions are being read for the first time."""
        return sum(1 for m in self._reads if m.tenant == tenant and m not in self._entries)

    async def resolve(self, ref: ModelRef) -> ResolvedModel:
        """The version ``ref`` names, and its id.

        Raises:
            ModelNotFound: no such version or alias (naming those the model has).
            StoreUnavailable: the model was never read and the store does not answer.
            LoadFailed: its ``aliases.json`` is not valid (when first read).
        """
        if ref.unversioned_answers and self._resident(ref.model_id):
            return ResolvedModel.unversioned(ref.model_id)  # a resident unversioned model
        found = await self.versions(ref.model_id)
        if found is None:
            return choose_unversioned(ref.model_id, ref.selector)
        return choose(ref.model_id, found, ref.selector)

    async def versions(self, model_id: ModelId, *, fresh: bool = False) -> ModelVersions | None:
        """The versions and aliases of ``model_id`` (``None``: not versioned), as last read;
        ``fresh`` reads the store now."""
        entry = self._entries.get(model_id)
        if entry is None or fresh:
            found = await self._read_once(model_id)
        else:
            self._entries.move_to_end(model_id)
            if self._clock() - entry.read_at >= self._refresh_s:
                entry.read_at = self._clock()  # one re-read per period, whatever it finds
                task = asyncio.get_running_loop().create_task(self._refresh(model_id))
                self._refreshing.add(task)  # held, or the loop may collect it unfinished
                task.add_done_callback(self._refreshing.discard)
            found = entry.found
        return self._with_promoted(model_id, found)

    async def promote(
        self,
        model_id: ModelId,
        version: int,
        alias: str = DEFAULT_ALIAS,
        *,
        prepare: Callable[[ResolvedModel], Awaitable[None]] | None = None,
    ) -> ResolvedModel:
        """Point ``alias`` of ``model_id`` at ``version`` (read from the store now), for every
        request resolved from now on; one resolved before keeps its version. ``prepare`` (the
        load) runs first: if it raises, the alias stays where it was.

        Raises:
            ModelNotFound: the model has no numbered versions, or not that one.
        """
        found = await self.versions(model_id, fresh=True)
        if found is None:
            raise ModelNotFound(
                f"model {model_id} has no numbered version folders ({model_id}/1/, "
                f"{model_id}/2/, …): it has no versions to promote"
            )
        target = choose(model_id, found, str(version))
        if prepare is not None:
            await prepare(target)
        self._promoted.setdefault(model_id, {})[alias] = version
        log.info("model %s: alias %s now names version %d", model_id, alias, version)
        return target

    async def _read_once(self, model_id: ModelId) -> ModelVersions | None:
        # Concurrent first requests for a model share one read.
        task = self._reads.get(model_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._read(model_id))
            self._reads[model_id] = task
            task.add_done_callback(lambda _: self._reads.pop(model_id, None))
        found = await asyncio.shield(task)
        self._keep(model_id, found)
        return found

    async def _refresh(self, model_id: ModelId) -> None:
        try:
            await self._read_once(model_id)
        except TenantServeError as exc:
            log.warning("model %s: versions not re-read (%s); serving the last read", model_id, exc)
        except Exception:  # nobody awaits a re-read (a closed pool at shutdown): log it here
            log.exception("model %s: versions not re-read; serving the last read", model_id)

    def _keep(self, model_id: ModelId, found: ModelVersions | None) -> None:
        self._entries[model_id] = _Entry(found, self._clock())
        self._entries.move_to_end(model_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def _with_promoted(
        self, model_id: ModelId, found: ModelVersions | None
    ) -> ModelVersions | None:
        promoted = self._promoted.get(model_id)
        if found is None or not promoted:
            return found
        for alias, version in promoted.items():
            if version in found.versions:  # a version deleted since is no longer named
                found = found.with_alias(alias, version)
        return found
