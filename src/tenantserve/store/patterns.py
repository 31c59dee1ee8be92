"""Model ids and glob patterns (``acme/*``) resolved against a store's listing, for pins and
preloads; a name that matches nothing is refused with the nearest ids the store holds."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Sequence

from tenantserve.errors import ModelNotFound
from tenantserve.types import ModelId

_GLOB = frozenset("*?[")
_NEAREST = 3


def is_pattern(name: str) -> bool:
    return any(ch in _GLOB for ch in name)


def resolve_patterns(
    patterns: Sequence[str], list_ids: Callable[[str], list[str]], *, what: str
) -> list[ModelId]:
    """The model ids ``patterns`` name, in order, each once.

    ``list_ids(prefix)`` lists the store under a prefix (a tenant, or ``""`` for all); a plain
    id costs one listing of its tenant, patterns one listing of the whole store.

    Raises:
        InvalidModelId: a name that is not a model id (patterns are checked once expanded).
        ModelNotFound: a name that matches nothing; ``what`` (e.g. ``--pin``) and the nearest
            ids are in the message.
    """
    listings: dict[str, list[str]] = {}

    def listing(prefix: str) -> list[str]:
        if prefix not in listings:
            listings[prefix] = list_ids(prefix)
        return listings[prefix]

    ids: dict[ModelId, None] = {}
    for name in patterns:
        if is_pattern(name):
            matched = [raw for raw in listing("") if fnmatch.fnmatchcase(raw, name)]
            candidates = listing("")
        else:
            model_id = ModelId.parse(name)
            own = listing(model_id.tenant)
            matched = [model_id.value] if model_id.value in own else []
            candidates = own or listing("")
        if not matched:
            raise ModelNotFound(_no_match(what, name, candidates))
        ids.update(dict.fromkeys(ModelId.parse(raw) for raw in matched))
    return list(ids)


def _no_match(what: str, name: str, candidates: list[str]) -> str:
    nearest = difflib.get_close_matches(name.replace("*", ""), candidates, n=_NEAREST, cutoff=0.4)
    hint = f"; nearest: {', '.join(nearest)}" if nearest else "; the store holds none like it"
    return f"{what} {name!r} matches no model in the store{hint}"
