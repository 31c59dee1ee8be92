"""Declared text pre-processing: ticket text in, token tensors made by the artifact's tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer

from tenantserve.errors import InvalidInput, LoadFailed, PredictFailed
from tenantserve.runtimes.base import LoadedModel
from tenantserve.runtimes.grouped import Grouped, Parts, group_key
from tenantserve.runtimes.length_buckets import length_buckets
from tenantserve.runtimes.shared import SharedBlocks, file_digest, measured
from tenantserve.types import Tensors, TensorSpec, TextPreprocess

# What a BERT-style graph (all-MiniLM and kin) takes, and which Encoding field fills each.
_TOKEN_FIELDS: dict[str, Callable[[Encoding], list[int]]] = {
    "input_ids": lambda encoding: encoding.ids,
    "attention_mask": lambda encoding: encoding.attention_mask,
    "token_type_ids": lambda encoding: encoding.type_ids,
}
_INT_DTYPES: dict[str, np.dtype[Any]] = {"INT64": np.dtype(np.int64), "INT32": np.dtype(np.int32)}


@dataclass(frozen=True, slots=True)
class _Padding:
    """How a batch is padded to one length: the tokenizer's own pad ids, the graph's length."""

    pad_id: int
    pad_type_id: int
    left: bool
    fixed_length: int | None  # the graph's sequence length when it declares one


SharedTokenizers = SharedBlocks[tuple[Tokenizer, "_Padding"]]
"""Tokenizers by (file digest, max length): a parsed MiniLM vocabulary holds ~6 MB, and a
thousand tenants on one encoder ship the same tokenizer.json."""


def with_tokenizer(
    model: LoadedModel, folder: Path, step: TextPreprocess, shared: SharedTokenizers
) -> TextInputModel:
    """``model``, which takes token tensors, behind one BYTES input ``step.text_input``.

    Raises:
        LoadFailed: the tokenizer file is not a tokenizer, or the graph takes inputs that are
            not token tensors (``input_ids``, ``attention_mask``, ``token_type_ids``).
    """
    feeds = _token_inputs(model.inputs, step)
    path = folder / step.tokenizer_file
    # Settings are part of the key: one Tokenizer object is configured for one max length.
    key = f"{file_digest(path)}:{step.max_length}"
    (tokenizer, padding), release = shared.acquire(
        key, lambda: measured(lambda: _read_tokenizer(path, step), path.stat().st_size)
    )
    return TextInputModel(
        model, tokenizer, step.text_input, feeds, _with_graph_length(padding, feeds), release
    )


class TextInputModel:
    """A LoadedModel whose callers send text; the graph gets the tokens it declares, no more."""

    def __init__(
        self,
        model: LoadedModel,
        tokenizer: Tokenizer,
        text_input: str,
        feeds: tuple[TensorSpec, ...],
        padding: _Padding,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self._model = model
        self._release = release
        self._tokenizer: Tokenizer | None = tokenizer
        self._text_input = text_input
        self._feeds = feeds
        self._padding = padding
        # [-1, 1] as the TF-IDF tenants declare, so one client request fits both kinds.
        self._inputs = (TensorSpec(text_input, "BYTES", (-1, 1)),)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._model.outputs

    @property
    def platform(self) -> str:
        return self._model.platform

    @property
    def group_key(self) -> str | None:
        # One tokenizer object per file and max length (shared), the same graph feeds and
        # padding: texts of these models make one padded token batch.
        inner = group_key(self._model)
        if inner is None or self._tokenizer is None:
            return None
        feeds = ",".join(f"{s.name}:{s.datatype}" for s in self._feeds)
        return f"text:{id(self._tokenizer)}:{self._padding}:{self._text_input}:{feeds}|{inner}"

    def predict(self, tensors: Tensors) -> Tensors:
        return self._run(tensors, [(self, -1)])[0]

    def predict_group(self, tensors: Tensors, parts: Parts) -> list[Tensors]:
        """Every part's texts tokenized as one batch, then the wrapped models' group run."""
        for model, _ in parts:
            if not isinstance(model, TextInputModel) or model.group_key != self.group_key:
                raise TypeError("a group of text models holds another model")
        return self._run(tensors, parts)

    def _run(self, tensors: Tensors, parts: Parts) -> list[Tensors]:
        """Each part's outputs (``-1`` rows: all). Rows are padded per length bucket
        (``length_buckets``), the attention mask hiding the padding, then scattered back."""
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise PredictFailed("model was unloaded")
        extra = sorted(set(tensors) - {self._text_input})
        if extra:
            raise InvalidInput(
                f"unexpected input {extra[0]!r}; the model takes: {self._text_input}"
            )
        texts = _texts(self._text_input, tensors.get(self._text_input))
        encodings = [tokenizer.encode(text) for text in texts]
        counts = [len(encodings) if rows == -1 else rows for _, rows in parts]
        owners = [index for index, rows in enumerate(counts) for _ in range(rows)]
        if len(owners) != len(encodings):
            raise ValueError("a group's parts do not cover its rows")
        per_row = all(spec.shape[:1] == (-1,) for spec in self._model.outputs)
        if self._padding.fixed_length is None and per_row:
            buckets = length_buckets([len(encoding.ids) for encoding in encodings])
        else:
            buckets = [list(range(len(encodings)))]
        pieces: list[list[tuple[list[int], Tensors]]] = [[] for _ in parts]
        for bucket in buckets:
            # Bucket rows are in index order, so each part's rows sit together.
            owned: list[tuple[int, int]] = []
            for row in bucket:
                if owned and owned[-1][0] == owners[row]:
                    owned[-1] = (owners[row], owned[-1][1] + 1)
                else:
                    owned.append((owners[row], 1))
            tokens = _token_tensors([encodings[r] for r in bucket], self._feeds, self._padding)
            inner = [(_wrapped(parts[owner][0]), rows) for owner, rows in owned]
            start = 0
            for (owner, rows), result in zip(owned, self._inner_run(tokens, inner), strict=True):
                pieces[owner].append((bucket[start : start + rows], result))
                start += rows
        return [_gathered(part) for part in pieces]

    def _inner_run(self, tokens: Tensors, parts: list[tuple[LoadedModel, int]]) -> list[Tensors]:
        wrapped = self._model
        if len(parts) == 1 and parts[0][0] is wrapped:
            return [wrapped.predict(tokens)]
        if not isinstance(wrapped, Grouped):
            raise TypeError("a text model without a group key was run in a group")
        return wrapped.predict_group(tokens, parts)

    def close(self) -> None:
        # Drop the tokenizer now: the cache trims the heap right after close.
        self._tokenizer = None
        self._release()
        self._model.close()


def _wrapped(model: LoadedModel) -> LoadedModel:
    if not isinstance(model, TextInputModel):
        raise TypeError("a group of text models holds another model")
    return model._model


def _gathered(pieces: list[tuple[list[int], Tensors]]) -> Tensors:
    """One part's outputs from its buckets' pieces, rows back in their order."""
    if len(pieces) == 1:
        return pieces[0][1]
    rows = np.concatenate([np.asarray(indexes) for indexes, _ in pieces])
    order = np.argsort(rows, kind="stable")
    names = pieces[0][1].keys()
    return {name: np.concatenate([out[name] for _, out in pieces])[order] for name in names}


def _token_inputs(inputs: tuple[TensorSpec, ...], step: TextPreprocess) -> tuple[TensorSpec, ...]:
    names = [spec.name for spec in inputs]
    if "input_ids" not in names:
        raise LoadFailed(f"preprocess needs a graph that takes 'input_ids'; it takes {names}")
    for spec in inputs:
        if spec.name not in _TOKEN_FIELDS:
            raise LoadFailed(
                f"preprocess feeds {sorted(_TOKEN_FIELDS)}; the graph also takes {spec.name!r}"
            )
        if spec.datatype not in _INT_DTYPES or len(spec.shape) != 2:
            raise LoadFailed(
                f"graph input {spec.name!r} is {spec.datatype} {list(spec.shape)}; "
                "token inputs must be INT64 or INT32 [batch, tokens]"
            )
        if spec.shape[1] != -1 and spec.shape[1] < step.max_length:
            raise LoadFailed(
                f"graph input {spec.name!r} holds {spec.shape[1]} tokens, fewer than "
                f"preprocess.max_length {step.max_length}"
            )
    return inputs


def _with_graph_length(padding: _Padding, feeds: tuple[TensorSpec, ...]) -> _Padding:
    # A graph exported with a fixed sequence length takes only that length.
    fixed = {spec.shape[1] for spec in feeds if spec.shape[1] != -1}
    if len(fixed) > 1:
        raise LoadFailed(f"graph token inputs declare different lengths {sorted(fixed)}")
    length = fixed.pop() if fixed else None
    return _Padding(padding.pad_id, padding.pad_type_id, padding.left, length)


def _read_tokenizer(path: Path, step: TextPreprocess) -> tuple[Tokenizer, _Padding]:
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises bare Exceptions for unreadable or bad JSON
        reason = str(exc).replace(str(path), step.tokenizer_file).splitlines()
        shown = reason[0][:200] if reason else type(exc).__name__
        raise LoadFailed(
            f"tokenizer file {step.tokenizer_file!r} cannot be loaded: {shown}"
        ) from exc
    configured = tokenizer.padding
    if configured is not None:
        padding = _Padding(
            configured["pad_id"], configured["pad_type_id"], configured["direction"] == "left", None
        )
    else:
        pad_id = tokenizer.token_to_id("[PAD]")
        padding = _Padding(0 if pad_id is None else pad_id, 0, False, None)
    # Padding is done here per batch, to the longest text, rather than by the tokenizer:
    # a tokenizer.json may pad every text to a fixed 128 (all-MiniLM does), and its batch
    # encoder runs on a thread pool of its own, which the fixed thread budget forbids.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=step.max_length)
    return tokenizer, padding


def _texts(name: str, array: npt.NDArray[Any] | None) -> list[str]:
    if array is None:
        raise InvalidInput(f"missing input {name!r}")
    if array.dtype.kind not in ("O", "U", "S"):
        raise InvalidInput(f"input {name!r} must be BYTES (text), not {array.dtype}")
    if not (array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)):
        raise InvalidInput(
            f"input {name!r} has shape {list(array.shape)}; the model takes [N] or [N, 1] texts"
        )
    if array.size == 0:
        raise InvalidInput(f"input {name!r} holds no texts")
    return check_texts(name, array)


def check_texts(name: str, array: npt.NDArray[Any]) -> list[str]:
    """The texts of input ``name`` as ``str``: each must be UTF-8 and not blank.

    Raises:
        InvalidInput: an element is not text, not UTF-8, or empty or whitespace only; the
            message names the input and the element.
    """
    texts: list[str] = []
    for i, item in enumerate(array.reshape(-1).tolist()):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"input {name!r} element {i} is not valid UTF-8") from None
        if not isinstance(item, str):
            raise InvalidInput(f"input {name!r} element {i} is not text")
        if not item.strip():
            raise InvalidInput(f"input {name!r} element {i} is empty")
        texts.append(item)
    return texts


def _token_tensors(
    encodings: list[Encoding], feeds: tuple[TensorSpec, ...], padding: _Padding
) -> dict[str, npt.NDArray[Any]]:
    width = padding.fixed_length or max(len(encoding.ids) for encoding in encodings)
    tensors: dict[str, npt.NDArray[Any]] = {}
    for spec in feeds:
        field = _TOKEN_FIELDS[spec.name]
        # attention_mask pads with 0, which is what masks the padding out.
        fill = {"input_ids": padding.pad_id, "token_type_ids": padding.pad_type_id}.get(
            spec.name, 0
        )
        array = np.full((len(encodings), width), fill, dtype=_INT_DTYPES[spec.datatype])
        for row, encoding in enumerate(encodings):
            values = field(encoding)
            if padding.left:
                array[row, width - len(values) :] = values
            else:
                array[row, : len(values)] = values
        tensors[spec.name] = array
    return tensors
