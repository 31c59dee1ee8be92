"""Model ids of a local store: a walk that stops at each model folder.

fsspec's ``find`` builds a record for every file of every model (32,000 files, ~550 ms for
10,000 models here); the ids need only which folders hold a marker file and which loose files
are archives or bare models. A model folder's own files never name another model (its
``model.onnx`` is not a bare model), so the walk does not descend into one: ~4x faster.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection


def local_model_ids(
    base: str,
    prefix: str,
    *,
    markers: Collection[str],
    suffixes: tuple[str, ...],
    is_model_id: Callable[[str], bool],
) -> list[str]:
    """Sorted model ids under the folder ``base`` (which is ``prefix`` in the store): folders
    holding one of ``markers``, and files ending in ``suffixes`` outside any model folder."""
    ids: list[str] = []
    pending = [(prefix, base)]
    while pending:
        rel, path = pending.pop()
        folders: list[tuple[str, str]] = []
        loose: list[str] = []
        is_model = False
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir():
                    folders.append((f"{rel}/{entry.name}" if rel else entry.name, entry.path))
                elif entry.name in markers:
                    is_model = True
                elif entry.name.endswith(suffixes):
                    loose.append(f"{rel}/{entry.name}" if rel else entry.name)
        if is_model:
            ids.append(rel)
        else:
            ids.extend(loose)
            pending.extend(folders)
    return sorted(i for i in ids if i and is_model_id(i))
