"""InferenceService: infer / load / unload / status — the whole pipeline, readable in one screen."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tenantserve.cache.model_cache import ModelCache
from tenantserve.errors import InvalidInput, ModelNotFound
from tenantserve.metrics import Metrics
from tenantserve.runtimes import LoadedModel
from tenantserve.scheduling.admission import Admission
from tenantserve.scheduling.executor import BoundedExecutor
from tenantserve.store.base import ModelStore
from tenantserve.types import ModelId, ModelMetadata, ModelStatus, Tensors, TensorSpec


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    """One model of the store, with its residency (OIP repository index)."""

    model_id: str
    state: str  # "READY" | "LOADING" | "UNAVAILABLE"
    reason: str = ""


class InferenceService:
    """The protocol-neutral core: every protocol's routes call these methods and nothing else."""

    def __init__(
        self,
        *,
        cache: ModelCache,
        store: ModelStore,
        admission: Admission,
        executor: BoundedExecutor,
        metrics: Metrics,
    ) -> None:
        self._cache = cache
        self._store = store
        self._admission = admission
        self._executor = executor
        self._metrics = metrics
        self._accepting = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._accepting = True

    def stop_accepting(self) -> None:
        """Readiness goes false first on shutdown, so balancers drain before we stop."""
        self._accepting = False

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready when accepting requests: serving does not wait for any model to be loaded."""
        return self._accepting

    # -- data plane ------------------------------------------------------------------------

    async def infer(
        self, model_id: ModelId, tensors: Tensors, *, outputs: Sequence[str] | None = None
    ) -> Tensors:
        """Run ``model_id`` on ``tensors``; loads the model on first use.

        Args:
            outputs: names of outputs to return; all when ``None``.
        Raises:
            Overloaded, ModelNotFound, InsufficientMemory, LoadFailed, InvalidInput, PredictFailed.
        """
        async with self._admission.admit(), self._cache.lease(model_id) as model:
            result = await self._predict(model, tensors)
        if outputs is None:
            return result
        unknown = [name for name in outputs if name not in result]
        if unknown:
            raise InvalidInput(
                f"unknown output {unknown[0]!r}; model {model_id} has outputs {sorted(result)}"
            )
        return {name: result[name] for name in outputs}

    async def infer_from(
        self, model_id: ModelId, decode: Callable[[tuple[TensorSpec, ...]], Tensors]
    ) -> Tensors:
        """Run ``model_id`` on what ``decode`` makes of its input signature; all outputs.

        For bodies that name no inputs (SageMaker's): one admission and one lease, where
        reading :meth:`metadata` first would lease twice and load outside admission.
        """
        async with self._admission.admit(), self._cache.lease(model_id) as model:
            return await self._predict(model, decode(model.inputs))

    async def _predict(self, model: LoadedModel, tensors: Tensors) -> Tensors:
        started = time.perf_counter()
        result = await self._executor.run(model.predict, tensors)
        self._metrics.inference.observe(time.perf_counter() - started)
        return result

    async def metadata(self, model_id: ModelId) -> ModelMetadata:
        """Signature of a model (loads it if needed: the signature is read from the graph)."""
        async with self._cache.lease(model_id) as model:
            return ModelMetadata(
                model_id=model_id.value,
                platform=model.platform,
                inputs=model.inputs,
                outputs=model.outputs,
                labels=self._cache.labels_of(model_id),
            )

    def is_resident(self, model_id: ModelId) -> bool:
        return self._cache.is_resident(model_id)

    # -- management ------------------------------------------------------------------------

    async def load(self, model_id: ModelId, *, pin: bool = False, exist_ok: bool = True) -> None:
        """Load now (and optionally pin). ``exist_ok=False`` raises ``ModelAlreadyLoaded``."""
        await self._cache.load(model_id, pin=pin, exist_ok=exist_ok)

    async def preload(self, patterns: Sequence[str], *, pin: bool = False) -> list[ModelId]:
        """Load models named by ids or glob patterns (``acme/*``) at start-up; returns the ids."""
        ids: list[ModelId] = []
        listed: list[str] | None = None
        for pattern in patterns:
            if not any(ch in pattern for ch in "*?["):
                ids.append(ModelId.parse(pattern))
                continue
            if listed is None:
                listed = await self._executor.run_io(self._store.list, "")
            matched = [ModelId.parse(raw) for raw in listed if fnmatch.fnmatchcase(raw, pattern)]
            if not matched:
                raise ModelNotFound(f"no model in the store matches {pattern!r}")
            ids.extend(matched)
        for model_id in ids:
            await self.load(model_id, pin=pin)
        return ids

    async def unload(self, model_id: ModelId) -> None:
        """Unload a resident model once its in-flight requests finish; unpins it first."""
        await self._cache.unload(model_id)

    def pin(self, model_id: ModelId, pinned: bool = True) -> None:
        self._cache.pin(model_id, pinned)

    def resident(self) -> list[ModelStatus]:
        return self._cache.status()

    def status_of(self, model_id: ModelId) -> ModelStatus:
        for status in self._cache.status():
            if status.model_id == model_id.value:
                return status
        raise ModelNotFound(f"model {model_id} is not loaded")

    async def index(self) -> list[RepositoryEntry]:
        """Every model in the store, with its state here."""
        ids = await self._executor.run_io(self._store.list, "")
        resident = {s.model_id: s for s in self._cache.status()}
        entries = []
        for raw in ids:
            status = resident.get(raw)
            state = "UNAVAILABLE" if status is None else status.state.upper()
            entries.append(RepositoryEntry(raw, state))
        return entries
