"""Shared parts: one copy per content digest (a base graph, a tokenizer), however many use it."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from tenantserve import memory
from tenantserve.errors import InvalidInput, LoadFailed
from tenantserve.runtimes.base import SharedUsage
from tenantserve.runtimes.grouped import Parts
from tenantserve.types import Tensors, TensorSpec

T = TypeVar("T")


@dataclass(slots=True)
class _Block(Generic[T]):
    value: T
    nbytes: int
    users: int


class SharedBlocks(Generic[T]):
    """Reference-counted values keyed by content digest; the last user's release frees one.

    ``nbytes`` of a block is what creating it grew the process by (``create`` measures it);
    the cache reads the total through :meth:`usage` and so counts a shared block once, not
    once per model.
    """

    def __init__(self) -> None:
        self._blocks: dict[str, _Block[T]] = {}
        self._lock = threading.Lock()

    def usage(self) -> SharedUsage:
        with self._lock:
            blocks = list(self._blocks.values())
        return SharedUsage(
            held_bytes=sum(b.nbytes for b in blocks),
            logical_bytes=sum(b.nbytes * b.users for b in blocks),
        )

    def holds(self, key: str) -> bool:
        with self._lock:
            return key in self._blocks

    def acquire(
        self, key: str, create: Callable[[], tuple[T, int]]
    ) -> tuple[T, Callable[[], None]]:
        """The value under ``key`` (made by ``create`` if nobody holds it) and its release."""
        with self._lock:
            block = self._blocks.get(key)
            if block is None:
                value, nbytes = create()
                block = self._blocks[key] = _Block(value, nbytes, 0)
            block.users += 1
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                block.users -= 1
                if block.users == 0 and self._blocks.get(key) is block:
                    del self._blocks[key]

        return block.value, release


def measured(make: Callable[[], T], floor_bytes: int) -> tuple[T, int]:
    """``make()`` and the resident bytes it added (heap trimmed on both sides)."""
    memory.trim()
    before = memory.rss_bytes()
    value = make()
    memory.trim()
    return value, max(memory.rss_bytes() - before, floor_bytes)


def verified_path(folder: Path, file_name: str, sha256: str) -> Path:
    """``folder / file_name`` once its content is checked against ``sha256``."""
    path = folder / file_name
    if file_digest(path) != sha256:
        raise LoadFailed(f"base model file {file_name!r} does not match its declared sha256")
    return path


def file_digest(path: Path) -> str:
    try:
        with path.open("rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as exc:
        raise LoadFailed(f"{path.name!r} could not be read ({type(exc).__name__})") from exc


class _Predictor(Protocol):
    """What a composite needs of each part: its signature and a checked ``predict``."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def predict(self, tensors: Tensors) -> Tensors: ...


class BaseHeadModel:
    """A tenant's head on a shared base: base(inputs) → head(base outputs + passed inputs)."""

    def __init__(
        self,
        base: _Predictor,
        head: _Predictor,
        release: Callable[[], None],
        base_digest: str | None = None,
    ) -> None:
        """``base_digest`` names the shared base: heads on one base batch together."""
        self._base = base
        self._key = None if base_digest is None else f"base:{base_digest}"
        self._head = head
        self._release = release
        produced = {spec.name for spec in base.outputs}
        passed = [s for s in head.inputs if s.name not in produced]
        base_names = {spec.name for spec in base.inputs}
        self._inputs = base.inputs + tuple(s for s in passed if s.name not in base_names)
        self._produced = produced

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._head.outputs

    @property
    def platform(self) -> str:
        return "onnxruntime_onnx"

    @property
    def group_key(self) -> str | None:
        return self._key

    def predict(self, tensors: Tensors) -> Tensors:
        self._check(tensors)
        return self._head.predict(self._feed(self._run_base(tensors), tensors))

    def predict_group(self, tensors: Tensors, parts: Parts) -> list[Tensors]:
        """The base once on every row, then each part's head on its rows."""
        base_out = self._run_base(tensors)
        results: list[Tensors] = []
        start = 0
        for model, rows in parts:
            if not isinstance(model, BaseHeadModel) or model._key != self._key:
                raise TypeError("a group of heads on one base holds another model")
            rows_of = slice(start, start + rows)
            own = {name: array[rows_of] for name, array in tensors.items()}
            model._check(own)
            hidden = {name: array[rows_of] for name, array in base_out.items()}
            results.append(model._head.predict(model._feed(hidden, own)))
            start += rows
        return results

    def _check(self, tensors: Tensors) -> None:
        known = {spec.name for spec in self._inputs}
        extra = sorted(set(tensors) - known)
        if extra:
            expected = ", ".join(sorted(known))
            raise InvalidInput(f"unexpected input {extra[0]!r}; the model takes: {expected}")

    def _run_base(self, tensors: Tensors) -> Tensors:
        return self._base.predict(
            {s.name: tensors[s.name] for s in self._base.inputs if s.name in tensors}
        )

    def _feed(self, base_out: Tensors, tensors: Tensors) -> Tensors:
        return {
            spec.name: base_out[spec.name] if spec.name in self._produced else tensors[spec.name]
            for spec in self._head.inputs
            if spec.name in self._produced or spec.name in tensors
        }

    def close(self) -> None:
        self._release()
