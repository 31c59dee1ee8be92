"""A ``torch.export`` archive (``pytorch.pt2``) read as data before PyTorch sees it.

``torch.export.load`` trusts its file: it unpickles weights and constants marked
``use_pickle`` (with ``weights_only=False``), custom and opaque objects, and the sample inputs
(falling back to a full unpickle); it compiles ``guards_code`` into a Python function; it
resolves each node's target as any attribute path under ``torch`` (``torch.load`` included),
and parses symbolic shapes with ``sympy.sympify``, which evaluates. So the archive is checked
here first, with ``zipfile`` and ``json`` only, and a copy is written that holds nothing but:
raw tensor bytes, the program's JSON, and empty sample inputs. Refused, by name: any other
entry, pickled tensors, custom or opaque objects, guards code, operators outside ATen,
symbolic expressions beyond arithmetic over shape symbols.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tenantserve.convert.archive_json import objects, open_zip, read_json
from tenantserve.errors import LoadFailed

MODEL = "model"  # torch.export.save's one program
MAX_JSON_BYTES = 64 << 20
_FIXED = frozenset(
    {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
)
_TENSOR_ENTRY = re.compile(r"data/(weights/weight|constants/tensor)_\d+")
_PROGRAM = f"models/{MODEL}.json"
_WEIGHTS_CONFIG = f"data/weights/{MODEL}_weights_config.json"
_CONSTANTS_CONFIG = f"data/constants/{MODEL}_constants_config.json"
_SAMPLE_INPUTS = f"data/sample_inputs/{MODEL}.pt"
_CONFIGS = (_WEIGHTS_CONFIG, _CONSTANTS_CONFIG)
# Shape arithmetic as torch writes it (plain, ``s0 + 1``, or sympy's ``Symbol('s0',
# integer=True)``): shape symbols, integers, operators, sympy's constructors and flags. No
# dots, no other names, no other strings: nothing for ``sympify`` to evaluate but arithmetic.
_EXPR_TOKEN = re.compile(
    r"\s*(?:'?[su]\d+'?|\d+|\*\*|[-+*/%(),=]|Max|Min|FloorDiv|Mod|CeilDiv|CeilToInt"
    r"|Symbol|Integer|Add|Mul|Pow|positive|negative|nonnegative|integer|True|False)"
)
# Operands that name Python objects rather than tensors and numbers.
_OBJECT_ARGS = frozenset({"as_operator", "as_custom_obj", "as_graph"})


def checked_copy(path: Path, into: Path) -> Path:
    """A copy of the archive at ``path``, in folder ``into``, that ``torch.export.load``
    reads without unpickling or evaluating anything from the file.

    Raises:
        LoadFailed: the file is not a torch.export archive or holds something refused.
    """
    with open_zip(path, "a torch.export archive") as archive:
        prefix = _prefix(archive)
        names = {info.filename.removeprefix(prefix): info for info in archive.infolist()}
        for name in names:
            known = name in _FIXED or name in (_PROGRAM, _SAMPLE_INPUTS, *_CONFIGS)
            if not known and not _TENSOR_ENTRY.fullmatch(name) and not name.endswith("/"):
                raise LoadFailed(f"pytorch.pt2 holds {name!r}, which tenantserve refuses")
        form = _entry(names, "archive_format")
        if form.file_size > 16 or archive.read(form).strip() != b"pt2":
            raise LoadFailed("pytorch.pt2 is not a torch.export archive (archive_format)")
        program = _json(archive, names, _PROGRAM)
        _check_program(program)
        for config in _CONFIGS:
            if config in names:
                _check_payloads(_json(archive, names, config), config)
        copy = into / "checked.pt2"
        with zipfile.ZipFile(copy, "w") as out:
            for name, info in names.items():
                data = b"" if name == _SAMPLE_INPUTS else archive.read(info)
                out.writestr(info, data)
    return copy


def _prefix(archive: zipfile.ZipFile) -> str:
    """The archive's top folder (torch writes every entry under one), from its format file."""
    for name in archive.namelist():
        if name.endswith("archive_format"):
            return name.removesuffix("archive_format")
    raise LoadFailed("pytorch.pt2 is not a torch.export archive (no archive_format)")


def _entry(names: dict[str, zipfile.ZipInfo], name: str) -> zipfile.ZipInfo:
    info = names.get(name)
    if info is None:
        raise LoadFailed(f"pytorch.pt2 has no {name}: save it with torch.export.save")
    return info


def _json(archive: zipfile.ZipFile, names: dict[str, zipfile.ZipInfo], name: str) -> Any:
    return read_json(archive, _entry(names, name), f"pytorch.pt2's {name}", MAX_JSON_BYTES)


def _check_program(program: Any) -> None:
    if not isinstance(program, dict) or "graph_module" not in program:
        raise LoadFailed("pytorch.pt2's program is not a torch.export program")
    if program.get("guards_code"):
        raise LoadFailed("pytorch.pt2 carries guards code (Python), which tenantserve refuses")
    for node in _nodes(program["graph_module"]):
        target = node.get("target")
        if not isinstance(target, str) or not (
            target.startswith("torch.ops.aten.") or target == "_operator.getitem"
        ):
            raise LoadFailed(
                f"pytorch.pt2 calls {target!r}: only ATen operators are converted "
                "(export with torch.export.export and no custom operators)"
            )
    for item in objects(program):
        for key, value in item.items():
            if key in _OBJECT_ARGS:
                raise LoadFailed(f"pytorch.pt2 passes an object ({key}), which tenantserve refuses")
            if key == "expr_str":
                _check_expr(value)
    for symbol in program.get("range_constraints", {}):
        _check_expr(symbol)


def _nodes(graph_module: Any) -> Iterator[dict[str, Any]]:
    graph = graph_module.get("graph", {}) if isinstance(graph_module, dict) else {}
    nodes = graph.get("nodes", []) if isinstance(graph, dict) else []
    yield from (node for node in nodes if isinstance(node, dict))


def _check_expr(expr: Any) -> None:
    text = expr if isinstance(expr, str) else ""
    position = 0
    while position < len(text):
        token = _EXPR_TOKEN.match(text, position)
        if token is None or token.end() == position:
            break
        position = token.end()
    if not text or text[position:].strip():
        raise LoadFailed(f"pytorch.pt2 has a shape expression tenantserve refuses: {expr!r:.80}")


def _check_payloads(config: Any, name: str) -> None:
    entries = config.get("config", {}) if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise LoadFailed(f"pytorch.pt2's {name} is not a payload list")
    for fqn, payload in entries.items():
        path = payload.get("path_name", "") if isinstance(payload, dict) else ""
        if not isinstance(payload, dict) or payload.get("use_pickle") is not False:
            raise LoadFailed(f"pytorch.pt2 stores {fqn!r} pickled, which tenantserve refuses")
        if not re.fullmatch(r"(weight|tensor)_\d+", str(path)):
            raise LoadFailed(f"pytorch.pt2 stores {fqn!r} as {path!r}, not a plain tensor")
