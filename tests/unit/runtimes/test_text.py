"""Declared text pre-processing: a real tokenizer.json and real ONNX graphs fed token tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from tenantserve.errors import InvalidInput, LoadFailed, PredictFailed
from tenantserve.runtimes import LoadedModel, default_runtimes, runtime_for
from tenantserve.types import ModelManifest, TensorSpec, TextPreprocess, TopKPostprocess

TICKETS = [
    "I lost my card yesterday, please freeze it",
    "how long does a transfer to another bank take",
    "my card payment was declined at the shop",
    "can I get a refund for a duplicate charge",
    "the exchange rate on my transfer looks wrong",
]
PAD_ID = 3  # not 0, so a test can tell the tokenizer's own pad id was used
TOKENS = ("input_ids", "attention_mask", "token_type_ids")


def write_tokenizer(path: Path) -> Path:
    """A BERT-style WordPiece tokenizer trained on TICKETS, padding to a fixed 128 as MiniLM's."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[UNK]", "[CLS]", "[SEP]", "[PAD]"]
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=special, show_progress=False)
    tokenizer.train_from_iterator(TICKETS, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    assert tokenizer.token_to_id("[PAD]") == PAD_ID
    tokenizer.enable_padding(length=128, pad_id=PAD_ID, pad_token="[PAD]")
    tokenizer.enable_truncation(max_length=128)
    tokenizer.save(str(path))
    return path


def echo_graph(folder: Path, names: tuple[str, ...] = TOKENS, length: str | int = "tokens") -> Path:
    """Returns each token input as ``<name>_out``, so a test sees exactly what was fed."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], [f"{name}_out"]) for name in names],
        "echo",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", length]) for n in names],
        [helper.make_tensor_value_info(f"{n}_out", TensorProto.INT64, ["batch", length])
         for n in names],
    )  # fmt: skip
    return _save(graph, folder)


def encoder_graph(folder: Path, vocab: int, classes: int) -> tuple[Path, Any, Any]:
    """A tiny sentence classifier: masked sum of embeddings, then a linear head → ``logits``."""
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal((vocab, 8)).astype(np.float32)
    head = rng.standard_normal((8, classes)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["vectors"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last"], ["mask3"]),
        helper.make_node("Mul", ["vectors", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "tokens_axis"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "head"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "encoder",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "tokens"])
         for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(embedding, "embedding"), numpy_helper.from_array(head, "head"),
         numpy_helper.from_array(np.array([-1], np.int64), "last"),
         numpy_helper.from_array(np.array([1], np.int64), "tokens_axis")],
    )  # fmt: skip
    return _save(graph, folder), embedding, head


def _save(graph: onnx.GraphProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def load(folder: Path, manifest: ModelManifest) -> LoadedModel:
    """Load as the cache does: the runtime the manifest names, with its declared steps."""
    return runtime_for(default_runtimes(), manifest).load(folder, manifest)


@pytest.fixture
def echo(tmp_path: Path) -> LoadedModel:
    folder = echo_graph(tmp_path / "echo")
    write_tokenizer(folder / "tokenizer.json")
    return load(folder, ModelManifest(preprocess=TextPreprocess()))


def _expected(path: Path, texts: list[str], max_length: int = 128) -> dict[str, Any]:
    """What the tokenizer itself makes of ``texts`` when padding to the longest in the batch."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_padding(pad_id=PAD_ID, pad_token="[PAD]")
    tokenizer.enable_truncation(max_length=max_length)
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings]),
        "attention_mask": np.array([e.attention_mask for e in encodings]),
        "token_type_ids": np.array([e.type_ids for e in encodings]),
    }


def test_the_model_takes_one_text_input(echo: LoadedModel) -> None:
    assert echo.inputs == (TensorSpec("text", "BYTES", (-1, 1)),)
    assert [spec.name for spec in echo.outputs] == [f"{name}_out" for name in TOKENS]
    assert echo.platform == "onnxruntime_onnx"


@pytest.mark.parametrize("shape", [(-1,), (-1, 1)])
def test_texts_become_the_tokenizers_own_tensors_padded_to_the_longest(
    echo: LoadedModel, tmp_path: Path, shape: tuple[int, ...]
) -> None:
    texts = [TICKETS[0], "refund", TICKETS[1].encode()]
    batch = np.array(texts, dtype=object).reshape(shape)
    out = echo.predict({"text": batch})
    expected = _expected(tmp_path / "echo" / "tokenizer.json", [TICKETS[0], "refund", TICKETS[1]])
    for name in TOKENS:
        assert out[f"{name}_out"].dtype == np.int64
        np.testing.assert_array_equal(out[f"{name}_out"], expected[name])
    ids = out["input_ids_out"]
    assert ids.shape[1] < 128  # not the tokenizer.json's fixed 128
    assert ids[1, -1] == PAD_ID  # the short text is padded with the tokenizer's pad id
    assert out["attention_mask_out"][1].sum() == 3  # [CLS] refund [SEP]


def test_long_texts_are_truncated_to_max_length(tmp_path: Path) -> None:
    folder = echo_graph(tmp_path / "m")
    write_tokenizer(folder / "vocab.json")
    step = TextPreprocess(tokenizer_file="vocab.json", max_length=6, text_input="ticket")
    model = load(folder, ModelManifest(preprocess=step))
    assert model.inputs[0].name == "ticket"
    out = model.predict({"ticket": np.array([[TICKETS[0]], ["refund"]], dtype=object)})
    assert out["input_ids_out"].shape == (2, 6)
    np.testing.assert_array_equal(
        out["input_ids_out"],
        _expected(folder / "vocab.json", [TICKETS[0], "refund"], 6)["input_ids"],
    )


def test_only_the_inputs_the_graph_declares_are_fed(tmp_path: Path) -> None:
    folder = echo_graph(tmp_path / "m", names=("input_ids", "attention_mask"))
    write_tokenizer(folder / "tokenizer.json")
    model = load(folder, ModelManifest(preprocess=TextPreprocess()))
    out = model.predict({"text": np.array(["refund please"], dtype=object)})
    assert set(out) == {"input_ids_out", "attention_mask_out"}


def test_a_graph_of_fixed_length_gets_that_length(tmp_path: Path) -> None:
    folder = echo_graph(tmp_path / "m", length=16)
    write_tokenizer(folder / "tokenizer.json")
    model = load(folder, ModelManifest(preprocess=TextPreprocess(max_length=16)))
    out = model.predict({"text": np.array(["refund"], dtype=object)})
    assert out["attention_mask_out"].tolist() == [[1, 1, 1] + [0] * 13]
    with pytest.raises(LoadFailed, match=r"fewer than preprocess\.max_length"):
        load(folder, ModelManifest(preprocess=TextPreprocess(max_length=32)))


def test_text_to_top_macros_end_to_end(tmp_path: Path) -> None:
    tokenizer_path = write_tokenizer(tmp_path / "tokenizer.json")
    vocab = Tokenizer.from_file(str(tokenizer_path)).get_vocab_size()
    folder, embedding, head = encoder_graph(tmp_path, vocab, classes=4)
    labels = ("freeze_card", "transfer_time", "declined", "refund")
    manifest = ModelManifest(
        labels=labels,
        preprocess=TextPreprocess(),
        postprocess=TopKPostprocess(scores_output="logits", top_k=2),
    )
    model = load(folder, manifest)
    assert model.inputs == (TensorSpec("text", "BYTES", (-1, 1)),)
    out = model.predict({"text": np.array(TICKETS, dtype=object)})
    expected = _expected(tokenizer_path, TICKETS)
    pooled = (embedding[expected["input_ids"]] * expected["attention_mask"][..., None]).sum(1)
    logits = pooled @ head
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-5, atol=1e-5)
    best = np.argsort(-logits, axis=1)[:, :2]
    assert out["macros"].tolist() == [[labels[i] for i in row] for row in best]
    np.testing.assert_allclose(
        out["scores"], np.take_along_axis(logits, best, 1), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"text": np.array([""], dtype=object)}, "input 'text' element 0 is empty"),
        ({"text": np.array(["ok", "  \n"], dtype=object)}, "input 'text' element 1 is empty"),
        ({"text": np.array([b"\xff\xfe"], dtype=object)}, "input 'text' element 0 is not valid"),
        ({"text": np.array([1, 2], dtype=object)}, "input 'text' element 0 is not text"),
        ({"text": np.zeros((2, 1), np.float32)}, "input 'text' must be BYTES"),
        ({"text": np.array([["a", "b"]], dtype=object)}, r"takes \[N\] or \[N, 1\] texts"),
        ({"text": np.empty((0, 1), dtype=object)}, "input 'text' holds no texts"),
        ({}, "missing input 'text'"),
        ({"text": np.array(["a"], dtype=object), "x": np.zeros(1)}, "unexpected input 'x'"),
    ],
)
def test_bad_text_names_the_input(echo: LoadedModel, tensors: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        echo.predict(tensors)


def test_a_closed_model_refuses_to_predict(echo: LoadedModel) -> None:
    echo.close()
    with pytest.raises(PredictFailed, match="unloaded"):
        echo.predict({"text": np.array(["refund"], dtype=object)})


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"model": {"type": "Nope"}}'])
def test_a_bad_tokenizer_file_is_a_load_failure(tmp_path: Path, content: bytes) -> None:
    folder = echo_graph(tmp_path / "m")
    (folder / "tokenizer.json").write_bytes(content)
    with pytest.raises(
        LoadFailed, match=r"tokenizer file 'tokenizer\.json' cannot be loaded"
    ) as info:
        load(folder, ModelManifest(preprocess=TextPreprocess()))
    assert str(tmp_path) not in str(info.value)


def test_a_graph_that_takes_no_tokens_is_a_load_failure(tmp_path: Path) -> None:
    numeric = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "numeric",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    folder = _save(numeric, tmp_path / "numeric")
    write_tokenizer(folder / "tokenizer.json")
    with pytest.raises(LoadFailed, match="'input_ids'"):
        load(folder, ModelManifest(preprocess=TextPreprocess()))
    extra = echo_graph(tmp_path / "extra", names=("input_ids", "position_ids"))
    write_tokenizer(extra / "tokenizer.json")
    with pytest.raises(LoadFailed, match="also takes 'position_ids'"):
        load(extra, ModelManifest(preprocess=TextPreprocess()))
