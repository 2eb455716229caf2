"""`local-ai apply [PLAN]`: make the machine match the manifest (and `--watch` keep it so)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from local_ai import settings
from local_ai.cli.options import ConfigOption, JsonOption, YesOption
from local_ai.cli.output import console, err_console, interactive, print_json
from local_ai.cli.plan import (
    FrozenOption,
    OfflineOption,
    PruneOption,
    SkipBenchmarkOption,
    TargetOption,
    run_options,
)
from local_ai.cli.progress import ConvertBar, RichProgress
from local_ai.errors import ExitCode, LocalAIError, UsageError

if TYPE_CHECKING:
    from local_ai.manifest.load import LoadedManifest
    from local_ai.reconcile.adapters import Adapters
    from local_ai.reconcile.executor import Outcome
    from local_ai.reconcile.model import Action, Plan
    from local_ai.reconcile.observe import Snapshot
    from local_ai.reconcile.run import ApplyResult, RunOptions, SavedPlan

LockTimeoutOption = Annotated[
    float,
    typer.Option(
        "--lock-timeout",
        help="Wait this many seconds for another apply to finish (default: fail at once).",
    ),
]


def apply_command(
    plan_file: Annotated[
        Path | None,
        typer.Argument(help="A plan saved by `local-ai plan --out`.", show_default=False),
    ] = None,
    config: ConfigOption = None,
    yes: YesOption = False,
    target: TargetOption = None,
    prune: PruneOption = False,
    frozen: FrozenOption = False,
    offline: OfflineOption = False,
    skip_benchmark: SkipBenchmarkOption = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan only.")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Apply again whenever the manifest changes.")
    ] = False,
    lock_timeout: LockTimeoutOption = 0.0,
    json: JsonOption = False,
) -> None:
    """Fetch, convert, benchmark and serve what local-ai.toml declares; ask first.

    Runs the plan in dependency order; a failed step skips only what depends on it, and a rerun
    continues from where it stopped.
    """
    from local_ai.manifest.load import load_manifest
    from local_ai.reconcile.run import load_plan

    options = run_options(target, prune, frozen, offline, skip_benchmark)
    saved = None
    if plan_file is not None:
        if watch:
            raise UsageError("--watch cannot apply a saved plan", hint="drop the PLAN argument")
        saved = load_plan(plan_file)
        options = saved.options
        config = saved.manifest
    path = settings.manifest_path(config)
    if watch:
        from local_ai.cli.watch import watch_manifest

        code = watch_manifest(
            path, options, yes=yes, json=json, lock_timeout=lock_timeout, once=_apply_once
        )
        raise typer.Exit(code)
    loaded = load_manifest(path)
    code = _apply_once(
        loaded,
        options,
        yes=yes or saved is not None,
        json=json,
        dry_run=dry_run,
        lock_timeout=lock_timeout,
        saved=saved,
    )
    if code:
        raise typer.Exit(code)


def _apply_once(
    loaded: LoadedManifest,
    options: RunOptions,
    *,
    yes: bool,
    json: bool,
    dry_run: bool = False,
    lock_timeout: float = 0.0,
    saved: SavedPlan | None = None,
) -> int:
    from local_ai.reconcile.render import render_text, to_json
    from local_ai.reconcile.run import (
        apply_plan,
        make_plan,
        settle,
        stage_cluster,
        stale_reason,
        with_saved_edits,
    )
    from local_ai.store.locks import apply_lock

    out = console()
    with apply_lock(settings.paths().apply_lock, timeout=lock_timeout):
        try:
            snapshot, the_plan = make_plan(loaded, options)
        except KeyboardInterrupt:
            out.print("Interrupted while planning: nothing was changed.", markup=False)
            return ExitCode.INTERRUPTED
        if saved is not None:
            why = stale_reason(saved, the_plan)
            if why is not None:
                raise LocalAIError(
                    f"stale plan: {why}", hint="run `local-ai plan --out FILE` again"
                )
            the_plan = with_saved_edits(saved, the_plan)
        if not json:
            out.print(render_text(the_plan), end="", markup=False, highlight=False)
        if the_plan.errors:
            if json:
                print_json({"plan": to_json(the_plan), "applied": False})
            return ExitCode.ERROR
        if dry_run or not the_plan.has_changes:
            recorded = None if dry_run or the_plan.has_changes else settle(snapshot)
            if json:
                print_json({"plan": to_json(the_plan), "applied": False})
            elif recorded is not None:
                out.print(
                    f"Generation {recorded.number} recorded: the apply that installed all this "
                    "was stopped before it could record it.",
                    markup=False,
                )
            if not dry_run:
                stage_cluster(loaded.manifest, options.targets, None)
            return ExitCode.OK
        if not yes:
            if not interactive():
                raise UsageError(
                    "apply needs confirmation and this is not an interactive terminal",
                    hint="pass --yes to apply without asking",
                )
            if not typer.confirm("Apply these changes?", default=False):
                out.print("Nothing changed.")
                return ExitCode.OK
        result = apply_plan(
            snapshot,
            the_plan,
            options,
            on_start=None if json else _announce,
            on_done=None if json else _finished,
            adapters=_adapters(snapshot, options, json=json),
        )
    if json:
        print_json(_result_json(the_plan, result))
    else:
        _print_summary(result)
    if result.report.interrupted:
        return ExitCode.INTERRUPTED
    return ExitCode.OK if result.report.ok else ExitCode.ERROR


def _adapters(snapshot: Snapshot, options: RunOptions, *, json: bool) -> Adapters:
    """Handlers with progress bars for people at a terminal (none for scripts)."""
    from local_ai.reconcile.adapters import Adapters

    bars = not json and err_console().is_terminal
    return Adapters(
        snapshot,
        offline=options.offline,
        frozen=options.frozen,
        fetch_progress=(lambda: RichProgress(err_console())) if bars else None,
        convert_progress=(lambda: _convert_bar(enabled=True)) if bars else None,
    )


def _convert_bar(*, enabled: bool) -> Any:
    return ConvertBar(enabled=enabled)


def _announce(action: Action) -> None:
    from rich.markup import escape

    err_console().print(f"[bold]→[/] {escape(action.id)} [dim]{escape(action.cause)}[/]")


def _finished(outcome: Outcome) -> None:
    from rich.markup import escape

    out = err_console()
    if outcome.status == "done":
        out.print(
            f"  [green]✓[/] {escape(outcome.action.id)} {escape(outcome.message)} "
            f"[dim]({outcome.seconds:.1f} s)[/]"
        )
    elif outcome.status == "failed":
        out.print(f"  [red]✗[/] {escape(outcome.action.id)}: {escape(outcome.message)}")
        if outcome.hint:
            out.print(f"    [dim]hint:[/] {escape(outcome.hint)}")
    else:
        out.print(f"  [yellow]-[/] {escape(outcome.action.id)} skipped: {escape(outcome.message)}")


def _print_summary(result: ApplyResult) -> None:
    report = result.report
    done, failed, skipped = (len(report.by_status(s)) for s in ("done", "failed", "skipped"))
    line = f"Apply {'interrupted' if report.interrupted else 'complete' if report.ok else 'failed'}"
    line += f": {done} done, {failed} failed, {skipped} skipped."
    if result.generation is not None:
        line += f" Generation {result.generation.number}."
    if result.gated_by:
        where = (
            f"stays on generation {result.gated_back_to}"
            if result.gated_back_to is not None
            else "serves no rejected build"
        )
        why = "; ".join(f"{o.action.id}: {o.message}" for o in result.gated_by)
        line += f" The server {where} (benchmark.gate): {why}."
    if not report.ok:
        line += " Run `local-ai apply` again to continue from here."
    console().print(line, markup=False)


def _result_json(the_plan: Plan, result: ApplyResult) -> dict[str, Any]:
    from local_ai.reconcile.render import to_json

    return {
        "plan": to_json(the_plan),
        "applied": True,
        "ok": result.report.ok,
        "interrupted": result.report.interrupted,
        "generation": result.generation.number if result.generation else None,
        "gated_back_to": result.gated_back_to,
        "gated_by": [o.action.id for o in result.gated_by],
        "outcomes": [
            {
                "id": o.action.id,
                "status": o.status,
                "message": o.message,
                "hint": o.hint,
                "seconds": round(o.seconds, 3),
            }
            for o in result.report.outcomes
        ],
    }
