"""Tenant plans from Banking77, CLINC150 or a user's CSV: macros, training rows, held-out rows."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tenantserve.errors import InvalidModelId
from tenantserve.tools.fleet.datasets import data_file_exists, read_data_text, resolve_datasets
from tenantserve.tools.fleet.text import (
    MAX_INTENTS,
    MIN_INTENTS,
    MODEL_NAME,
    ROWS_PER_INTENT,
    Example,
    find_banking77,
    load_banking77,
    tenant_names,
)
from tenantserve.types import ModelId

DATASETS = ("banking77", "clinc150")
MIN_LABELS = 2
# One row per label goes to the held-out set; the rest must still teach the classifier.
MIN_ROWS_PER_LABEL = 5
HOLDOUT_FRACTION = 0.2
_REQUIRED_COLUMNS = ("text", "label")
_Row = tuple[str, str, str, int]  # text, label, tenant ("" without the column), line number


class FleetInputError(ValueError):
    """The input cannot make a fleet; the message names the file, row or tenant at fault."""


@dataclass(frozen=True, slots=True)
class TenantPlan:
    """What one tenant's classifier learns from (``train``) and is scored on (``holdout``)."""

    tenant: str
    source: str
    macros: tuple[str, ...]
    train: tuple[Example, ...]
    holdout: tuple[Example, ...]

    @property
    def model_id(self) -> str:
        """Where the artifact goes in the store: ``<tenant>/macros``."""
        return f"{self.tenant}/{MODEL_NAME}"


def plan_fleet(
    dataset: str, *, tenants: int | None, seed: int, datasets_dir: Path | None
) -> list[TenantPlan]:
    """Plan a fleet from ``banking77``, ``clinc150`` or a path to a CSV file.

    ``tenants`` is how many tenants to simulate (default 10); for a CSV with a ``tenant``
    column every tenant in the file is built, or the first ``tenants`` of them in name order; a
    CSV without one is one tenant, named after the file.
    ``datasets_dir`` holds ``banking77/`` and ``clinc150/``; ``None`` reads
    ``$TENANTSERVE_DATASETS``, else the copy that ships with the package.

    Raises:
        FleetInputError: unknown dataset, missing files or columns, or a tenant that cannot be
            trained (fewer than two labels, too few rows of a label).
    """
    if tenants is not None and tenants < 1:
        raise FleetInputError(f"--tenants must be at least 1 (got {tenants})")
    if dataset in DATASETS:
        datasets_dir = resolve_datasets(datasets_dir)
        if dataset == "banking77":
            return plan_banking77(datasets_dir, tenants=tenants or 10, seed=seed)
        return plan_clinc150(datasets_dir, tenants=tenants or 10, seed=seed)
    path = Path(dataset)
    if path.suffix.lower() == ".csv" or path.is_file():
        return plan_csv(path, tenants=tenants, seed=seed)
    raise FleetInputError(
        f"unknown dataset {dataset!r}: use {' or '.join(DATASETS)}, or the path of a CSV file "
        "with columns text,label[,tenant]"
    )


def plan_banking77(datasets_dir: Path, *, tenants: int, seed: int) -> list[TenantPlan]:
    """Tenants with 10-40 random Banking77 intents each: the tenants ``build_text_fleet`` makes."""
    try:
        folder = find_banking77(datasets_dir)
    except FileNotFoundError as exc:
        raise FleetInputError(str(exc)) from None
    train = load_banking77(folder / "train.csv")
    test = load_banking77(folder / "test.csv")
    intents = sorted({row.intent for row in train})
    return _random_subsets("banking77", train, test, intents, tenants=tenants, seed=seed)


def plan_clinc150(datasets_dir: Path, *, tenants: int, seed: int) -> list[TenantPlan]:
    """One CLINC150 domain per tenant (at most 10), its intents' train and test rows."""
    folder = next(
        (d for d in (datasets_dir, datasets_dir / "clinc150") if (d / "domains.json").is_file()),
        None,
    )
    if folder is None or not data_file_exists(folder / "data_full.json"):
        raise FleetInputError(f"no clinc150 data_full.json/domains.json under {datasets_dir}")
    domains: dict[str, list[str]] = json.loads((folder / "domains.json").read_text("utf-8"))
    if tenants > len(domains):
        raise FleetInputError(
            f"clinc150 has {len(domains)} domains, one per tenant: --tenants must be at most "
            f"{len(domains)} (got {tenants})"
        )
    data = json.loads(read_data_text(folder / "data_full.json"))
    train = [Example(text, intent) for text, intent in data["train"]]
    test = [Example(text, intent) for text, intent in data["test"]]
    chosen = sorted(domains)
    random.Random(seed).shuffle(chosen)
    return [
        _slice(domain.replace("_", "-"), "clinc150", sorted(domains[domain]), train, test, seed + i)
        for i, domain in enumerate(chosen[:tenants])
    ]


def plan_csv(path: Path, *, tenants: int | None, seed: int) -> list[TenantPlan]:
    """Tenants from a ``text,label[,tenant]`` CSV; each label's rows split 80/20 by ``seed``.

    Without a ``tenant`` column the file is one tenant's history: one model, named after the
    file (``tickets.csv`` → ``tickets/macros``). Sharing its labels out among simulated tenants
    would give every tenant the same few labels, so the same model, several times over.
    """
    rows, has_tenant = read_labelled_csv(path)
    source = path.name
    if not has_tenant:
        tenant = _file_tenant(path, tenants)
        rows = [(text, label, tenant, line) for text, label, _, line in rows]
    by_tenant = _group(rows, key=lambda row: row[2])
    problems: list[str] = []
    for tenant, tenant_rows in sorted(by_tenant.items()):
        try:
            ModelId.parse(f"{tenant}/{MODEL_NAME}")
        except InvalidModelId:
            problems.append(
                f"tenant {tenant!r} (first at line {tenant_rows[0][3]}): a tenant name must start "
                "with a letter or digit and hold only letters, digits, '.', '_' or '-'"
            )
            continue
        try:
            _check_labels(f"tenant {tenant!r}", _group(tenant_rows, key=lambda row: row[1]))
        except FleetInputError as exc:
            problems.append(str(exc))
    if problems:
        raise FleetInputError(f"{path}: " + "; ".join(problems))
    plans: list[TenantPlan] = []
    for index, tenant in enumerate(sorted(by_tenant)[:tenants]):
        by_label = _group(by_tenant[tenant], key=lambda row: row[1])
        train, holdout = _split(by_label, seed=seed + index)
        plans.append(
            TenantPlan(tenant, source, tuple(sorted(by_label)), tuple(train), tuple(holdout))
        )
    return plans


def _file_tenant(path: Path, tenants: int | None) -> str:
    """The one tenant of a CSV without a ``tenant`` column: the file's name without ``.csv``."""
    tenant = path.stem
    fix = "add a tenant column naming each row's tenant"
    if tenants is not None and tenants > 1:
        raise FleetInputError(
            f"{path} has no tenant column, so it makes one model ({tenant}/{MODEL_NAME}), not "
            f"--tenants {tenants}: {fix}, or leave out --tenants"
        )
    try:
        ModelId.parse(f"{tenant}/{MODEL_NAME}")
    except InvalidModelId:
        raise FleetInputError(
            f"{path} has no tenant column, so its model is named after the file, but "
            f"{tenant!r} is not a tenant name (a letter or digit first, then only letters, "
            f"digits, '.', '_' or '-'): rename the file, or {fix}"
        ) from None
    return tenant


def read_labelled_csv(path: Path) -> tuple[list[_Row], bool]:
    """The rows of a ``text,label[,tenant]`` CSV, and whether it has the ``tenant`` column."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FleetInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise FleetInputError(
            f"{path} is not UTF-8: byte 0x{raw[exc.start]:02x} at line {line} (offset "
            f"{exc.start}); save the file as UTF-8"
        ) from None
    # newline="" semantics: the csv module keeps quoted newlines inside a field.
    reader = csv.DictReader(io.StringIO(content, newline=""))
    columns = [name.strip() for name in reader.fieldnames or ()]
    missing = [name for name in _REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise FleetInputError(
            f"{path}: missing column(s) {', '.join(missing)} in the header line (found: "
            f"{', '.join(columns) or 'nothing'}); expected text,label and optionally tenant"
        )
    reader.fieldnames = columns
    has_tenant = "tenant" in columns
    rows: list[_Row] = []
    for record in reader:
        line = reader.line_num
        values = {name: (record.get(name) or "").strip() for name in (*_REQUIRED_COLUMNS, "tenant")}
        for name in (*_REQUIRED_COLUMNS, *(("tenant",) if has_tenant else ())):
            if not values[name]:
                raise FleetInputError(f"{path} line {line}: empty {name!r}")
        rows.append((values["text"], values["label"], values["tenant"], line))
    if not rows:
        raise FleetInputError(f"{path}: no rows after the header line")
    return rows, has_tenant


def _group(rows: Iterable[_Row], *, key: Callable[[_Row], str]) -> dict[str, list[_Row]]:
    groups: dict[str, list[_Row]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return dict(groups)


def _check_labels(what: str, by_label: dict[str, list[_Row]]) -> None:
    if len(by_label) < MIN_LABELS:
        raise FleetInputError(
            f"{what} has {len(by_label)} label ({', '.join(map(repr, by_label))}); a classifier "
            f"needs at least {MIN_LABELS}"
        )
    short = sorted((len(rows), label) for label, rows in by_label.items())
    few = [f"{label!r} has {count}" for count, label in short if count < MIN_ROWS_PER_LABEL]
    if few:
        raise FleetInputError(
            f"{what} has too few examples: label {', '.join(few[:5])}"
            f"{' …' if len(few) > 5 else ''} (each label needs at least {MIN_ROWS_PER_LABEL})"
        )


def _split(by_label: dict[str, list[_Row]], *, seed: int) -> tuple[list[Example], list[Example]]:
    # Stratified by hand: every label keeps training rows and gets at least one held-out row.
    rng = random.Random(seed)
    train: list[Example] = []
    holdout: list[Example] = []
    for label in sorted(by_label):
        rows = list(by_label[label])
        rng.shuffle(rows)
        cut = max(1, round(HOLDOUT_FRACTION * len(rows)))
        holdout.extend(Example(text, label) for text, _, _, _ in rows[:cut])
        train.extend(Example(text, label) for text, _, _, _ in rows[cut:])
    return train, holdout


def _random_subsets(
    source: str,
    train: Sequence[Example],
    test: Sequence[Example],
    labels: Sequence[str],
    *,
    tenants: int,
    seed: int,
) -> list[TenantPlan]:
    # The same draws, in the same order, as text.build_text_fleet: one seed, one fleet.
    rng = random.Random(seed)
    plans = []
    for index, name in enumerate(tenant_names(tenants, seed=seed)):
        count = min(len(labels), rng.randint(MIN_INTENTS, MAX_INTENTS))
        chosen = sorted(rng.sample(list(labels), count))
        plans.append(_slice(name, source, chosen, train, test, seed + index))
    return plans


def _slice(
    tenant: str,
    source: str,
    intents: Sequence[str],
    train: Sequence[Example],
    test: Sequence[Example],
    seed: int,
) -> TenantPlan:
    # Up to ROWS_PER_INTENT training rows of each intent; every test row of them is held out.
    rng = random.Random(seed)
    chosen = set(intents)
    by_intent: dict[str, list[Example]] = {intent: [] for intent in intents}
    for row in train:
        if row.intent in chosen:
            by_intent[row.intent].append(row)
    rows: list[Example] = []
    for intent in intents:
        pool = by_intent[intent]
        rows.extend(rng.sample(pool, min(ROWS_PER_INTENT, len(pool))))
    holdout = tuple(row for row in test if row.intent in chosen)
    return TenantPlan(tenant, source, tuple(intents), tuple(rows), holdout)
