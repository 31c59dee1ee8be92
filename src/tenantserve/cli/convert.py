"""``tenantserve convert PATH --out DIR``: a native model to a proved ONNX artifact, ahead."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer


def convert_command(
    path: Annotated[
        Path,
        typer.Argument(
            help="An artifact folder holding a native model file (sklearn.skops, "
            "xgboost.json, xgboost.ubj, lightgbm.txt, pytorch.pt2, keras.keras; sample.npy or "
            "sample.csv beside it are the rows the proof runs on), or the native file itself."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Folder to write model.onnx (a servable ONNX artifact) and conversion.json "
            "(framework, versions, the rows proved on, the largest difference) into.",
        ),
    ],
) -> None:
    """Convert a scikit-learn, XGBoost, LightGBM, PyTorch or Keras model to ONNX, proved.

    The server does this itself on a model's first load; converting ahead of time moves the
    framework (and its extra) off the serving machines. Exit 1 when the model cannot be
    converted or the converted one differs beyond its framework's tolerance (the message says
    by how much); see docs/frameworks.md.
    """
    from tenantserve.convert.registry import NATIVE_FILES, ONNX_FILE, REPORT_FILE, native_file
    from tenantserve.errors import LoadFailed

    if path.is_file():
        folder, name = path.parent, path.name
    elif path.is_dir():
        folder, found = path, native_file(path)
        if found is None:
            _fail(f"{path} holds no native model file ({', '.join(NATIVE_FILES)})")
        name = str(found)
    else:
        _fail(f"{path} does not exist")
    try:
        from tenantserve.convert.run import convert_artifact  # imports onnx (an extra's)

        conversion = convert_artifact(folder, name)
    except ImportError as exc:
        _fail(f"converting needs the framework's extra, e.g. 'tenantserve[sklearn]' ({exc})")
    except LoadFailed as exc:
        _fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    (out / ONNX_FILE).write_bytes(conversion.onnx)
    (out / REPORT_FILE).write_text(json.dumps(conversion.report(), indent=1) + "\n")
    typer.echo(
        f"{name} ({conversion.framework} {conversion.kind}) -> {out / ONNX_FILE}: proved on "
        f"{conversion.rows}, largest difference {conversion.max_difference:.3g} "
        f"(tolerance {conversion.tolerance})"
    )


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)
