"""A Keras 3 file (``keras.keras``) read as data before Keras sees it.

A ``.keras`` file is a zip of ``config.json`` (the model, as nested ``{"module",
"class_name", "config"}`` objects), ``metadata.json`` and ``model.weights.h5``. Keras loads it
with safe mode on (no lambdas), but it would still import what a config names; here every
object must be one of Keras's own and every layer one that tenantserve converts, and the
layers must form one chain (a Sequential model, or a functional one without branches), before
``keras.saving.load_model`` reads a copy that holds those three entries only.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from tenantserve.convert.archive_json import objects, open_zip, read_json
from tenantserve.errors import LoadFailed

# Layers converted (keras_model), and the ones that do nothing when predicting.
LAYERS = frozenset(
    {"Dense", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "BatchNormalization",
     "Normalization", "LayerNormalization", "Rescaling", "InputLayer"}
)  # fmt: skip
PASS_THROUGH = frozenset(
    {"Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
     "Flatten"}
)  # fmt: skip
_ENTRIES = ("config.json", "metadata.json", "model.weights.h5")
_MODELS = {("keras", "Sequential"), ("keras.src.models.functional", "Functional")}
_MODULES = frozenset(
    {"keras", "keras.layers", "keras.initializers", "keras.regularizers", "keras.constraints"}
)
_TENSOR = "__keras_tensor__"
MAX_CONFIG_BYTES = 16 << 20


def checked_copy(path: Path, into: Path) -> tuple[Path, list[str]]:
    """A copy of the file at ``path`` in folder ``into`` with only Keras's three entries, and
    the names of the model's layers in the order they run.

    Raises:
        LoadFailed: not a Keras 3 file, or it names something tenantserve does not convert.
    """
    with open_zip(path, "a Keras 3 file") as archive:
        names = set(archive.namelist())
        missing = [name for name in ("config.json", "model.weights.h5") if name not in names]
        if missing:
            raise LoadFailed(f"keras.keras has no {missing[0]}: save it with model.save()")
        info = archive.getinfo("config.json")
        config = read_json(archive, info, "keras.keras's config.json", MAX_CONFIG_BYTES)
        order = chain(config)
        copy = into / "checked.keras"
        with zipfile.ZipFile(copy, "w") as out:
            for name in _ENTRIES:
                if name in names:
                    out.writestr(archive.getinfo(name), archive.read(name))
    return copy, order


def chain(config: Any) -> list[str]:
    """The layer names of model ``config``, in order, once every object in it is checked."""
    if not isinstance(config, dict) or (config.get("module"), config.get("class_name")) not in (
        _MODELS
    ):
        found = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise LoadFailed(
            f"keras.keras holds a {found}: a Sequential or functional Model is converted"
        )
    layers = config.get("config", {}).get("layers", [])
    if not isinstance(layers, list) or not layers:
        raise LoadFailed("keras.keras's model has no layers")
    for item in objects(layers):
        if "class_name" in item:
            _check_object(item)
    order = [str(layer.get("config", {}).get("name")) for layer in layers]
    if config["class_name"] == "Functional":
        for previous, layer in zip(order, layers[1:], strict=False):
            if _inputs(layer) != [previous]:
                raise LoadFailed(
                    f"keras.keras's layer {layer['config'].get('name')!r} does not follow "
                    f"{previous!r} alone: models without branches are converted"
                )
    return order


def _check_object(item: dict[str, Any]) -> None:
    module, name = item.get("module"), item.get("class_name")
    if module is None and name == _TENSOR:
        return
    if module not in _MODULES or item.get("registered_name") not in (None, name):
        raise LoadFailed(
            f"keras.keras names {module}.{name}: only Keras's own objects are converted "
            "(no custom layers, lambdas or functions)"
        )
    if module == "keras.layers" and name not in LAYERS | PASS_THROUGH:
        supported = ", ".join(sorted((LAYERS | PASS_THROUGH) - {"InputLayer"}))
        raise LoadFailed(f"keras.keras uses a {name} layer; converted are: {supported}")


def _inputs(layer: dict[str, Any]) -> list[str]:
    """The layers whose outputs ``layer`` takes (functional models' ``inbound_nodes``)."""
    found: list[str] = []
    for node in layer.get("inbound_nodes", []):
        stack: list[Any] = [node.get("args", []) if isinstance(node, dict) else node]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            elif isinstance(item, dict) and item.get("class_name") == _TENSOR:
                history = item.get("config", {}).get("keras_history", [])
                found.append(str(history[0]) if history else "")
    return found
