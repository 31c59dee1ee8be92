"""``tenantserve fleet build | synth``: build per-tenant models and publish them to a store."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from tenantserve.units import human_bytes

if TYPE_CHECKING:
    from tenantserve.tools.fleet.build import TenantBuild
    from tenantserve.tools.fleet.publish import Publisher

fleet_app = typer.Typer(
    help="Build fleets of per-tenant models into a model store (a folder or s3://…): one "
    "intent classifier per tenant from real support text, or synthetic numeric models of a "
    "chosen size for load and eviction benchmarks.",
    no_args_is_help=True,
)

_MB = 1_000_000
CreateBucketOpt = Annotated[
    bool,
    typer.Option(
        "--create-bucket",
        help="Create the s3:// store's bucket if it does not exist. Without it a missing "
        "bucket stops the command before anything is built, so a mistyped name never "
        "becomes a new bucket.",
    ),
]
_SYNTH_ROWS_SHOWN = 10
# A thousand-tenant build's table would bury the mean (taken over every tenant) and warnings.
_BUILD_ROWS_SHOWN = 100


class Kind(StrEnum):
    """The kinds of tenant classifier ``fleet build`` makes."""

    tfidf = "tfidf"
    minilm = "minilm"


class HeadKind(StrEnum):
    """How ``fleet build --kind minilm`` fits each tenant's head."""

    ridge = "ridge"
    logreg = "logreg"


class _BarProgress:
    """``FleetProgress`` drawn as rich progress bars, one per stage."""

    def __init__(self, bar: Progress) -> None:
        self._bar = bar
        self._tasks: dict[str, TaskID] = {}

    def begin(self, stage: str, total: int) -> None:
        self._tasks[stage] = self._bar.add_task(stage, total=total)

    def advance(self, stage: str, steps: int = 1) -> None:
        self._bar.advance(self._tasks[stage], steps)


def _progress_bar(console: Console) -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        "eta",
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _fail(message: str, code: int) -> typer.Exit:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


@fleet_app.command(
    help="Train one intent classifier (a macro suggester) per tenant and publish it to the "
    "store.\n\nEach artifact is <tenant>/macros/ holding model.onnx and model.json (labels, "
    "sha256, memory hint, top-5 post-processing), plus tokenizer.json for minilm. Every tenant "
    "is checked before anything is written; each artifact is built in a temporary folder and "
    "published whole. Ends with a table of held-out accuracy and artifact size per tenant."
)
def build(
    dataset: Annotated[
        str,
        typer.Option(
            help="banking77 (77 banking intents; each tenant gets 10-40 of them), clinc150 "
            "(one of its 10 domains per tenant), or the path of a CSV file with columns "
            "text,label and optionally tenant (one model per tenant in the file; without "
            "the column, one model named after the file: tickets.csv makes tickets/macros).",
        ),
    ],
    store: Annotated[
        str,
        typer.Option(
            help="Where artifacts go: a local folder or an fsspec URL (s3://bucket/prefix; "
            "endpoint and keys from AWS_* variables), uploaded as they are built. Each "
            "tenant's model is <tenant>/macros.",
        ),
    ],
    tenants: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="How many tenants to build (default 10; at most 10 for clinc150). For a CSV "
            "with a tenant column: all of its tenants, or the first N by name.",
        ),
    ] = None,
    kind: Annotated[
        Kind,
        typer.Option(
            case_sensitive=False,
            help="tfidf: TF-IDF + logistic regression (~1 MB, string input). minilm: the "
            "all-MiniLM-L6-v2 encoder with a per-tenant head, one ~23 MB ONNX graph with its "
            "tokenizer; slower to build (every text is embedded once).",
        ),
    ] = Kind.tfidf,
    head: Annotated[
        HeadKind,
        typer.Option(
            case_sensitive=False,
            help="minilm only. ridge: a closed-form least-squares head (~40 ms a tenant, "
            "held-out accuracy within a point of logreg on Banking77). logreg: scikit-learn "
            "logistic regression (~3-4 s a tenant).",
        ),
    ] = HeadKind.ridge,
    seed: Annotated[int, typer.Option(help="Same seed, same tenants and models.")] = 0,
    datasets: Annotated[
        Path | None,
        typer.Option(
            envvar="TENANTSERVE_DATASETS",
            help="Folder holding banking77/ and clinc150/, plain or .gz (default: the copy "
            "that ships with tenantserve).",
        ),
    ] = None,
    create_bucket: CreateBucketOpt = False,
) -> None:
    """Build a tenant classifier fleet (help text above, shown by ``--help``)."""
    from tenantserve.tools.fleet.build import FleetBuildError, build_fleet
    from tenantserve.tools.fleet.sources import FleetInputError, plan_fleet

    console = Console()
    try:
        plans = plan_fleet(
            dataset,
            tenants=tenants,
            seed=seed,
            datasets_dir=datasets,
        )
    except (FleetInputError, ValueError, ImportError) as exc:
        raise _fail(str(exc), 2) from None
    publisher = _open_store(store, create_bucket=create_bucket, console=console)
    try:
        with _progress_bar(console) as bar:
            results = build_fleet(
                plans,
                kind=kind.value,
                publisher=publisher,
                seed=seed,
                progress=_BarProgress(bar),
                head=head.value,
            )
    except (FleetBuildError, OSError) as exc:
        raise _fail(str(exc), 1) from None
    console.print(_summary(results, title=f"{kind.value} fleet from {dataset} in {store}"))
    _warn_near_chance(results)


class SynthKind(StrEnum):
    """The kinds of fleet ``fleet synth`` writes."""

    numeric = "numeric"
    mixed = "mixed"


@fleet_app.command(
    help="Write numeric models of a chosen size for load and eviction benchmarks.\n\nModel i "
    "is tenant-<i>/model-<i> (input FP32 [N, 16], output FP32 [N, 4]); its random weights are "
    "fixed by (seed, i), so a fleet can be rebuilt byte for byte. With --kind mixed, every "
    "fourth model from the second on is a scikit-learn, XGBoost or LightGBM file in turn (a "
    "4-class classifier on the same input, docs/frameworks.md)."
)
def synth(
    models: Annotated[int, typer.Option(min=1, help="How many models to write.")],
    size_mb: Annotated[
        float, typer.Option(min=0.001, help="Size of each model file in MB (10^6 bytes).")
    ],
    store: Annotated[str, typer.Option(help="A local folder or an fsspec URL (s3://…).")],
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
    kind: Annotated[
        SynthKind,
        typer.Option(
            case_sensitive=False,
            help="numeric: ONNX models only. mixed: ONNX, scikit-learn (sklearn.skops), "
            "XGBoost (xgboost.json) and LightGBM (lightgbm.txt) tenants in turn; needs the "
            "sklearn, xgboost and lightgbm extras.",
        ),
    ] = SynthKind.numeric,
    create_bucket: CreateBucketOpt = False,
) -> None:
    """Write a synthetic fleet (help text above, shown by ``--help``)."""
    from tenantserve.tools.fleet.native import MissingFramework
    from tenantserve.tools.fleet.synth_publish import synth_fleet

    console = Console()
    publisher = _open_store(store, create_bucket=create_bucket, console=console)
    try:
        with _progress_bar(console) as bar:
            written = synth_fleet(
                models=models,
                size_bytes=int(size_mb * _MB),
                seed=seed,
                publisher=publisher,
                progress=_BarProgress(bar),
                kind=kind.value,
            )
    except MissingFramework as exc:
        raise _fail(str(exc), 2) from None
    except OSError as exc:
        raise _fail(str(exc), 1) from None
    table = Table(title=f"{len(written)} synthetic models in {store}")
    table.add_column("model id")
    table.add_column("size", justify="right")
    table.add_column("kind")
    for model_id, nbytes, framework in written[:_SYNTH_ROWS_SHOWN]:
        table.add_row(model_id, human_bytes(nbytes), framework)
    if len(written) > _SYNTH_ROWS_SHOWN:
        table.add_row(f"… {len(written) - _SYNTH_ROWS_SHOWN} more", "")
    console.print(table)


def _open_store(store: str, *, create_bucket: bool, console: Console) -> Publisher:
    from tenantserve.tools.fleet.publish import MissingBucket, open_publisher

    try:
        publisher = open_publisher(store, create_bucket=create_bucket)
    except MissingBucket as exc:
        raise _fail(f"{exc}: check the name in --store, or add --create-bucket", 2) from None
    except (ValueError, ImportError) as exc:
        raise _fail(str(exc), 2) from None
    except OSError as exc:
        raise _fail(f"cannot open the store {store}: {exc}", 1) from None
    if publisher.created_bucket:
        console.print(f"created bucket {publisher.created_bucket!r}", highlight=False)
    return publisher


def _warn_near_chance(results: list[TenantBuild]) -> None:
    from tenantserve.tools.fleet.build import NEAR_CHANCE_POINTS

    err = Console(stderr=True, soft_wrap=True)
    for r in results:
        if r.near_chance:
            err.print(
                f"[bold yellow]warning:[/] tenant {r.tenant!r}: held-out accuracy "
                f"{r.holdout_accuracy:.1%} is within {NEAR_CHANCE_POINTS * 100:.0f} points of "
                f"chance ({r.chance_accuracy:.1%}: a guess among {r.macros} labels, or always the "
                "commonest one), so its model learnt next to nothing; check that the text "
                "tells its labels apart and add examples of each",
                highlight=False,
            )


def _summary(results: list[TenantBuild], *, title: str) -> Table:
    table = Table(title=title)
    for name, justify in (
        ("tenant", "left"),
        ("macros", "right"),
        ("examples", "right"),
        ("held-out", "right"),
        ("accuracy", "right"),
        ("artifact", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=name == "tenant")  # type: ignore[arg-type]
    for r in results[:_BUILD_ROWS_SHOWN]:
        table.add_row(
            r.tenant,
            str(r.macros),
            str(r.train_rows),
            str(r.holdout_rows),
            f"{r.holdout_accuracy:.1%}",
            human_bytes(r.artifact_bytes),  # a tiny model reads 1.7 KiB, not 0.00 MB
        )
    if len(results) > _BUILD_ROWS_SHOWN:
        table.add_row(f"… {len(results) - _BUILD_ROWS_SHOWN} more", "", "", "", "", "")
    if results:
        mean = sum(r.holdout_accuracy for r in results) / len(results)
        table.add_section()
        table.add_row("mean", "", "", "", f"{mean:.1%}", "")
    return table
