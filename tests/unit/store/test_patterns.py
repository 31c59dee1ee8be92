"""Pins and preloads resolved against the store: globs expand, typos are named with the
nearest ids, and no name is loaded twice."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tenantserve.errors import InvalidModelId, ModelNotFound
from tenantserve.store.patterns import resolve_patterns

STORE = ["acme/macros", "acme/routing", "globex/macros", "initech/tps"]


def _lister(calls: list[str]) -> Callable[[str], list[str]]:
    def list_ids(prefix: str) -> list[str]:
        calls.append(prefix)
        return [m for m in STORE if not prefix or m.startswith(prefix + "/")]

    return list_ids


def test_ids_and_globs_expand_in_order_each_once() -> None:
    calls: list[str] = []
    ids = resolve_patterns(
        ["globex/macros", "acme/*", "acme/macros"],
        _lister(calls),
        what="--preload",
    )
    assert [i.value for i in ids] == ["globex/macros", "acme/macros", "acme/routing"]
    assert calls == ["globex", "", "acme"]  # each listing once, the whole store only for globs


def test_a_typo_names_the_flag_and_the_nearest_ids() -> None:
    with pytest.raises(ModelNotFound) as info:
        resolve_patterns(["acme/macro"], _lister([]), what="--pin")
    message = str(info.value)
    assert message.startswith("--pin 'acme/macro' matches no model in the store; nearest: ")
    assert "acme/macros" in message


def test_a_glob_that_matches_nothing_and_a_bad_id_are_refused() -> None:
    with pytest.raises(ModelNotFound, match="'umbrella/\\*' matches no model"):
        resolve_patterns(["umbrella/*"], _lister([]), what="--preload")
    with pytest.raises(InvalidModelId):
        resolve_patterns(["../etc"], _lister([]), what="--pin")
