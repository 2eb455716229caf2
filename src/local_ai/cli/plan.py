"""`local-ai plan`: what apply would change, and why — without changing anything."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from local_ai import settings
from local_ai.cli.errors import detailed_exitcode as terraform_codes
from local_ai.cli.options import ConfigOption, JsonOption
from local_ai.cli.output import console, print_json
from local_ai.errors import ExitCode

if TYPE_CHECKING:
    from local_ai.reconcile.run import RunOptions

TargetOption = Annotated[
    list[str] | None,
    typer.Option("--target", "-t", help="Plan only this alias (repeatable).", show_default=False),
]
PruneOption = Annotated[
    bool, typer.Option("--prune", help="Remove installed aliases the manifest no longer names.")
]
FrozenOption = Annotated[
    bool,
    typer.Option("--frozen", help="Use only local-ai.lock; fail when the manifest disagrees."),
]
OfflineOption = Annotated[
    bool, typer.Option("--offline", help="Use only the HuggingFace cache (no network).")
]
SkipBenchmarkOption = Annotated[
    bool, typer.Option("--skip-benchmark", help="Do not benchmark new or rebuilt models.")
]


def run_options(
    target: list[str] | None, prune: bool, frozen: bool, offline: bool, skip_benchmark: bool
) -> RunOptions:
    """The flags plan and apply share, as the options both run with."""
    from local_ai.reconcile.run import RunOptions

    return RunOptions(
        prune=prune,
        frozen=frozen,
        targets=tuple(target or ()),
        offline=offline,
        benchmark=not skip_benchmark,
    )


def plan_command(
    config: ConfigOption = None,
    target: TargetOption = None,
    prune: PruneOption = False,
    frozen: FrozenOption = False,
    offline: OfflineOption = False,
    skip_benchmark: SkipBenchmarkOption = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Save the plan; `local-ai apply FILE` applies exactly it."),
    ] = None,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode",
            help="Exit 0 when nothing changes, 2 when changes are pending, 1 on any error.",
        ),
    ] = False,
    json: JsonOption = False,
) -> None:
    """Show what `local-ai apply` would do: each change with its cause, bytes to download,
    disk to use and peak memory; every unchanged resource with the reason."""
    from local_ai.manifest.load import load_manifest
    from local_ai.reconcile.render import render_text, to_json
    from local_ai.reconcile.run import make_plan, save_plan

    with terraform_codes(detailed_exitcode):
        loaded = load_manifest(settings.manifest_path(config))
        options = run_options(target, prune, frozen, offline, skip_benchmark)
        _, the_plan = make_plan(loaded, options)
        if json:
            print_json(to_json(the_plan))
        else:
            console().print(render_text(the_plan), end="", markup=False, highlight=False)
        if out is not None and not the_plan.errors:
            save_plan(out, loaded, options, the_plan)
            if not json:
                console().print(f"Saved the plan to {out}; apply it with `local-ai apply {out}`.")
        if the_plan.errors:
            raise typer.Exit(ExitCode.ERROR)
        if detailed_exitcode and the_plan.has_changes:
            raise typer.Exit(ExitCode.CHANGES)
