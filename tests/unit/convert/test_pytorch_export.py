"""PyTorch programs: the archive is read as data first, and what torch.export.load would
unpickle, compile or resolve from the file is refused by name before PyTorch sees it."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tenantserve.convert.pt2_archive import checked_copy
from tenantserve.convert.pytorch_export import CONVERTER
from tenantserve.convert.run import convert_artifact
from tenantserve.errors import LoadFailed


def _export(net: torch.nn.Module, path: Path, *, features: int = 3, batch: bool = True) -> Path:
    torch.manual_seed(0)
    example = (torch.zeros((2, features)),)
    shapes = ({0: torch.export.Dim("batch")},) if batch else None
    torch.export.save(torch.export.export(net.eval(), example, dynamic_shapes=shapes), path)
    return path


def _mlp(outputs: int, last: torch.nn.Module | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, outputs)]
    return torch.nn.Sequential(*layers, *([last] if last is not None else []))


def _rewritten(path: Path, change: Callable[[str, bytes], bytes | None]) -> Path:
    """The archive with each entry passed through ``change`` (``None`` drops it)."""
    out = path.with_name("changed.pt2")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = change(info.filename, src.read(info))
            if data is not None:
                dst.writestr(info, data)
    return out


def _program_changed(path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    def change(name: str, data: bytes) -> bytes:
        if not name.endswith("models/model.json"):
            return data
        program = json.loads(data)
        edit(program)
        return json.dumps(program).encode()

    return _rewritten(path, change)


@pytest.mark.parametrize(
    ("last", "outputs", "kind", "names"),
    [
        (None, 3, "classifier", {"label", "probabilities"}),  # logits: a softmax is added
        (torch.nn.Softmax(dim=1), 3, "classifier", {"label", "probabilities"}),
        (torch.nn.Sigmoid(), 1, "classifier", {"label", "probabilities"}),
        (None, 1, "regressor", {"predictions"}),
    ],
)
def test_each_network_end_converts_and_proves_equal(
    tmp_path: Path, last: torch.nn.Module | None, outputs: int, kind: str, names: set[str]
) -> None:
    _export(_mlp(outputs, last), tmp_path / "pytorch.pt2")
    conversion = convert_artifact(tmp_path, "pytorch.pt2")
    assert (conversion.framework, conversion.kind, conversion.n_features) == (
        "PyTorch", kind, 3
    )  # fmt: skip
    assert conversion.max_difference < 1e-5
    import onnx

    graph = onnx.load_from_string(conversion.onnx).graph
    assert {o.name for o in graph.output} == names
    assert [i.name for i in graph.input] == ["input"]


def test_several_columns_after_a_relu_are_neither_kind(tmp_path: Path) -> None:
    _export(_mlp(3, torch.nn.ReLU()), tmp_path / "pytorch.pt2")
    with pytest.raises(
        LoadFailed, match=r"last 3 columns come from neither a softmax nor a linear"
    ):
        CONVERTER.open(tmp_path / "pytorch.pt2")


def test_a_fixed_batch_dimension_is_refused_with_the_fix(tmp_path: Path) -> None:
    _export(_mlp(2), tmp_path / "pytorch.pt2", batch=False)
    with pytest.raises(LoadFailed, match=r"batch dimension is fixed.*Dim\(\"batch\"\)"):
        CONVERTER.open(tmp_path / "pytorch.pt2")


def test_a_file_that_is_not_an_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pytorch.pt2").write_bytes(b"\x80\x04not a zip")
    with pytest.raises(LoadFailed, match=r"not a torch.export archive"):
        CONVERTER.open(tmp_path / "pytorch.pt2")


def test_pickled_weights_are_refused_before_torch_reads_them(tmp_path: Path) -> None:
    path = _export(_mlp(2), tmp_path / "pytorch.pt2")

    def pickled(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            for payload in config["config"].values():
                payload["use_pickle"] = True
            return json.dumps(config).encode()
        return data

    with pytest.raises(LoadFailed, match=r"stores '0.weight' pickled"):
        checked_copy(_rewritten(path, pickled), tmp_path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda p: p.__setitem__("guards_code", ["import os"]), r"guards code"),
        (
            lambda p: p["graph_module"]["graph"]["nodes"][0].__setitem__("target", "torch.load"),
            r"calls 'torch.load': only ATen",
        ),
        (
            lambda p: p["range_constraints"].__setitem__("__import__('os').system('x')", {}),
            r"shape expression tenantserve refuses",
        ),
        (
            lambda p: p["graph_module"]["graph"]["nodes"][0]["inputs"].append(
                {"arg": {"as_operator": "builtins.exec"}}
            ),
            r"passes an object \(as_operator\)",
        ),
    ],
)
def test_what_torch_would_run_from_the_file_is_refused(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    path = _export(_mlp(2), tmp_path / "pytorch.pt2")
    with pytest.raises(LoadFailed, match=match):
        checked_copy(_program_changed(path, edit), tmp_path)


def test_an_extra_entry_is_refused_and_sample_inputs_are_never_read(tmp_path: Path) -> None:
    path = _export(_mlp(2), tmp_path / "pytorch.pt2")
    extra = _rewritten(path, lambda name, data: data)
    with zipfile.ZipFile(extra, "a") as archive:
        archive.writestr("pytorch/data/aotinductor/model.so", b"\x7fELF")
    with pytest.raises(LoadFailed, match=r"holds 'data/aotinductor/model.so'"):
        checked_copy(extra, tmp_path)
    # The sample inputs (a pickle torch.save wrote) are emptied in the copy torch reads.
    copy = checked_copy(path, tmp_path)
    with zipfile.ZipFile(copy) as archive:
        samples = [n for n in archive.namelist() if "sample_inputs" in n]
        assert samples
        assert all(archive.read(n) == b"" for n in samples)
    rows = np.ones((4, 3), np.float32)
    assert CONVERTER.open(path).predict(rows)["probabilities"].shape == (4, 2)
