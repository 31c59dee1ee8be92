"""Sizes: the bytes a model holds — said by its runtime, or measured once — and the lock that
keeps measurements true while other loads run beside them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from tenantserve import memory
from tenantserve.runtimes import LoadedModel, Prepared, Runtime
from tenantserve.store.base import LocalArtifact
from tenantserve.types import ModelId

# Before the first load of a model measured by RSS its size is unknown; an ONNX Runtime
# session was seen to hold 1.5-1.6x its file, so reserve 2x and settle to the measured size.
_FIRST_LOAD_FACTOR = 2
# Before the first load of a shape, what a session holds beside its mapped file is unknown:
# a few kB to a few hundred (1-4 kB per kB of graph) were measured; reserve generously.
_FIRST_OVERHEAD_SHARE = 4
_FIRST_OVERHEAD_MIN = 1024 * 1024
_REMEMBERED = 100_000
# A model file's identity for its measured size: the id and the file's size (a replaced
# artifact of another size is measured again).
SizeKey = tuple[ModelId, int]
K = TypeVar("K")


class MeasureLock:
    """Loads and closes of models whose size is known share it; a load that is measured holds
    it alone, since RSS deltas mean something only while nothing else loads or frees.

    A measurement waiting for the lock goes before loads that come after it.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._sharing = 0
        self._alone = False
        self._waiting_alone = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._changed:
            while self._alone or self._waiting_alone:
                self._changed.wait()
            self._sharing += 1
        try:
            yield
        finally:
            with self._changed:
                self._sharing -= 1
                if not self._sharing:
                    self._changed.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._changed:
            self._waiting_alone += 1
            try:
                while self._alone or self._sharing:
                    self._changed.wait()
            finally:
                self._waiting_alone -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._changed:
                self._alone = False
                self._changed.notify_all()


@dataclass(frozen=True, slots=True)
class Plan:
    """How one load is sized: its estimate, and whether that is already its size."""

    estimate: int
    exact: bool  # the estimate is the size: no measurement, no lock held alone
    creates_shared: bool  # the load makes a shared part, which its runtime measures


class Sizes:
    """What models hold. A model whose runtime maps its file holds the file plus a per-session
    overhead, learned by measuring the first load of each shape; any other model is measured
    by RSS on its first load (per model file) and holds that after. Thread-safe."""

    def __init__(self, *, measure_memory: bool = True) -> None:
        self._measure_memory = measure_memory
        self.lock = MeasureLock()
        self._guard = threading.Lock()
        self._known: OrderedDict[SizeKey, int] = OrderedDict()
        self._overheads: OrderedDict[str, int] = OrderedDict()

    def plan(self, artifact: LocalArtifact, prepared: Prepared, shared: int) -> Plan:
        """Size a load: ``shared`` is what it adds in shared parts not held yet (counted once,
        by the runtime, apart from the model)."""
        if not self._measure_memory:  # offline replay: sizes are given, nothing is resident
            return Plan(artifact.manifest.memory_hint_bytes or artifact.nbytes, True, False)
        if prepared.held_bytes is not None:  # said by the runtime: nothing to learn
            return Plan(prepared.held_bytes + shared, not shared, bool(shared))
        mapped = prepared.mapped_bytes
        with self._guard:
            if mapped is not None:
                overhead = self._overheads.get(prepared.shape)
                known = mapped + overhead if overhead is not None else None
            else:
                known = self._known.get(size_key(artifact))
        if known is not None:
            return Plan(known + shared, not shared, bool(shared))
        if mapped is not None:  # what the runtime says beats a manifest's hint
            guess = mapped + max(mapped // _FIRST_OVERHEAD_SHARE, _FIRST_OVERHEAD_MIN)
        elif artifact.manifest.memory_hint_bytes:
            guess = artifact.manifest.memory_hint_bytes
        else:
            guess = own_file_bytes(artifact) * _FIRST_LOAD_FACTOR
        return Plan(guess + shared, False, bool(shared))

    def load(
        self, runtime: Runtime, artifact: LocalArtifact, prepared: Prepared, plan: Plan
    ) -> tuple[LoadedModel, int]:
        """Load in a worker thread: (the model, the bytes it holds). A load of known size
        shares the lock with others; one that must be measured holds it alone."""
        path, manifest = artifact.path, artifact.manifest
        if plan.exact:
            with self.lock.shared():
                return runtime.load(path, manifest), plan.estimate
        mapped = prepared.mapped_bytes
        with self.lock.alone():
            memory.trim()  # once per shape or model file, never on the way of known loads
            rss, anon = memory.rss_bytes(), memory.anon_bytes()
            shared_before = runtime.shared_usage().held_bytes
            model = runtime.load(path, manifest)
            memory.trim()  # the parsed model file is garbage glibc would otherwise keep
            shared_grown = runtime.shared_usage().held_bytes - shared_before
            rss_grown, anon_grown = memory.rss_bytes() - rss, memory.anon_bytes() - anon
        if prepared.held_bytes is not None:  # measured only for the shared part it made
            return model, prepared.held_bytes
        if mapped is not None:
            if shared_grown:  # a base made beside it blurs what the session itself took
                return model, mapped + self._overhead_or_guess(prepared)
            overhead = max(0, anon_grown)  # the mapped file is counted whole, pages or not
            self._remember(self._overheads, prepared.shape, overhead)
            return model, mapped + overhead
        # A shared part created by this load is the runtime's to count, once.
        nbytes = max(rss_grown - shared_grown, own_file_bytes(artifact))
        self._remember(self._known, size_key(artifact), nbytes)
        return model, nbytes

    def _overhead_or_guess(self, prepared: Prepared) -> int:
        mapped = prepared.mapped_bytes or 0
        with self._guard:
            overhead = self._overheads.get(prepared.shape)
        if overhead is not None:
            return overhead
        return max(mapped // _FIRST_OVERHEAD_SHARE, _FIRST_OVERHEAD_MIN)

    def _remember(self, table: OrderedDict[K, int], key: K, nbytes: int) -> None:
        with self._guard:
            table[key] = nbytes
            table.move_to_end(key)
            if len(table) > _REMEMBERED:
                table.popitem(last=False)


def size_key(artifact: LocalArtifact) -> SizeKey:
    return artifact.model_id, own_file_bytes(artifact)


def own_file_bytes(artifact: LocalArtifact) -> int:
    """The model file's size: a floor for what its session holds (a shared base excluded)."""
    try:
        return (artifact.path / artifact.manifest.model_file).stat().st_size
    except OSError:
        return artifact.nbytes
