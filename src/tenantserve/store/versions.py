"""Model versions in a store, Triton's layout: ``acme/macros/1/``, ``acme/macros/2/``, ….

A model folder that holds no model file of its own and has numbered subfolders is a
*versioned* model: each numbered folder is one version's artifact, whose id (and cache entry)
is its path (``acme/macros/2``). ``aliases.json`` beside the numbered folders names versions
(``{"stable": 1, "canary": 2}``). Everything else — a folder with its model file, an archive,
a bare ``.onnx`` — is one version, ``1``, as before versions existed. Pure functions here;
the store lists and reads (``FsspecStore.versions``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import orjson
from fsspec import AbstractFileSystem

from tenantserve.errors import LoadFailed, ModelNotFound
from tenantserve.types import DEFAULT_ALIAS, ModelId, ResolvedModel, is_alias, is_version

__all__ = ["ALIASES_FILE", "DEFAULT_ALIAS", "ModelVersions", "choose", "choose_unversioned"]

ALIASES_FILE = "aliases.json"
MAX_ALIASES_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ModelVersions:
    """What a versioned model folder holds: its version numbers (ascending) and aliases."""

    versions: tuple[int, ...]
    aliases: Mapping[str, int] = field(default_factory=dict)

    @property
    def default(self) -> int:
        """The version a bare id serves: the ``stable`` alias's, else the highest."""
        return self.aliases.get(DEFAULT_ALIAS, self.versions[-1])

    def with_alias(self, alias: str, version: int) -> ModelVersions:
        return ModelVersions(self.versions, {**self.aliases, alias: version})


def folder_versions(
    files: Iterable[str], folders: Iterable[str], markers: Iterable[str]
) -> tuple[int, ...]:
    """The version numbers of a folder from its direct ``files`` and ``folders`` (names), or
    ``()`` when it is not versioned: it holds one of ``markers`` (a model file of its own)
    or no numbered folder."""
    if set(files) & set(markers):
        return ()
    return tuple(sorted(int(name) for name in folders if is_version(name)))


def parse_aliases(raw: bytes, model_id: ModelId, versions: tuple[int, ...]) -> dict[str, int]:
    """``aliases.json`` of ``model_id``: a JSON object of alias name → version number, each
    a version the folder holds.

    Raises:
        LoadFailed: the file is not that, naming what is wrong.
    """
    where = f"{ALIASES_FILE} of model {model_id}"
    if len(raw) > MAX_ALIASES_BYTES:
        raise LoadFailed(f"{where} is larger than {MAX_ALIASES_BYTES} bytes")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise LoadFailed(f"{where} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise LoadFailed(f'{where} must be a JSON object such as {{"{DEFAULT_ALIAS}": 1}}')
    aliases: dict[str, int] = {}
    for name, value in doc.items():
        ref = f"{model_id}@{name}"
        if not is_alias(name):
            raise LoadFailed(
                f"{where}: {name[:64]!r} is not an alias name (a letter, then letters, "
                "digits, '_' or '-')"
            )
        number = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(number, str) or not is_version(number):
            raise LoadFailed(f"{where}: {name!r} must name a version number, e.g. 1")
        if int(number) not in versions:
            raise LoadFailed(
                f"{where}: {ref} names version {number}, which the model does not have "
                f"(versions: {_listed(versions)})"
            )
        aliases[name] = int(number)
    return aliases


def choose(model_id: ModelId, found: ModelVersions, selector: str) -> ResolvedModel:
    """The version ``selector`` picks (``""``: the default; a number; an alias).

    Raises:
        ModelNotFound: no such version or alias, naming those the model has.
    """
    if not selector:
        version = found.default
    elif is_version(selector):
        version = int(selector)
        if version not in found.versions:
            raise ModelNotFound(
                f"model {model_id} has no version {selector} (versions: {_listed(found.versions)})"
            )
    else:
        picked = found.aliases.get(selector)
        if picked is None:
            names = ", ".join(sorted(found.aliases)) or "none"
            raise ModelNotFound(f"model {model_id} has no alias {selector!r} (aliases: {names})")
        version = picked
    return ResolvedModel(model_id, str(version), ModelId.parse(f"{model_id}/{version}"))


def choose_unversioned(model_id: ModelId, selector: str) -> ResolvedModel:
    """A model without numbered folders: version ``1`` only, and no aliases.

    Raises:
        ModelNotFound: any other version or an alias, saying the model has none.
    """
    if selector in ("", "1"):
        return ResolvedModel.unversioned(model_id)
    what = f"version {selector}" if is_version(selector) else f"alias {selector!r}"
    raise ModelNotFound(
        f"model {model_id} has no {what}: it has no numbered version folders, so it serves "
        "version 1 only"
    )


def split_version(model_id: str) -> tuple[str, str]:
    """A listed id as (name, version): ``acme/macros/2`` → (``acme/macros``, ``2``) when its
    last segment is a version number, else (the id, ``1``)."""
    parent, last = posixpath.split(model_id)
    if parent and is_version(last):
        return parent, last
    return model_id, "1"


def _listed(versions: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in versions) or "none"


def read_versions(
    fs: AbstractFileSystem, rpath: str, model_id: ModelId, markers: Iterable[str]
) -> ModelVersions | None:
    """What the folder at ``rpath`` holds, read with one listing (and ``aliases.json``);
    ``None`` for a model that is not versioned (a file, or a folder with its model file).

    Raises:
        LoadFailed: ``aliases.json`` is not valid (see :func:`parse_aliases`).
        OSError and the filesystem's own errors: for the store's retry loop to translate.
    """
    rpath = rpath.rstrip("/")
    files: dict[str, int] = {}
    folders: list[str] = []
    for entry in fs.ls(rpath, detail=True):
        name = str(entry["name"]).rstrip("/")
        if name == rpath:  # a file lists as itself
            return None
        base = posixpath.basename(name)
        if entry.get("type") == "directory":
            folders.append(base)
        else:
            files[base] = int(entry.get("size") or 0)
    versions = folder_versions(files, folders, markers)
    if not versions:
        return None
    if ALIASES_FILE not in files:
        return ModelVersions(versions)
    if files[ALIASES_FILE] > MAX_ALIASES_BYTES:
        raise LoadFailed(
            f"{ALIASES_FILE} of model {model_id} is larger than {MAX_ALIASES_BYTES} bytes"
        )
    raw: bytes = fs.cat_file(f"{rpath}/{ALIASES_FILE}")
    return ModelVersions(versions, parse_aliases(raw, model_id, versions))
