"""The executor: walks the plan's DAG and calls one handler per action. It makes no decisions:
a failed action skips its dependents, independent actions go on, every result is recorded.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from local_ai import settings
from local_ai.errors import LocalAIError, disk_full_error, is_disk_full
from local_ai.reconcile.model import Action, Kind, Plan
from local_ai.util.failpoints import failpoint

Status = Literal["done", "failed", "skipped"]
Handler = Callable[[Action], str | None]  # returns a one-line result for people, or None


@dataclass(frozen=True)
class Outcome:
    action: Action
    status: Status
    message: str = ""
    hint: str | None = None
    seconds: float = 0.0
    error: LocalAIError | None = None  # the typed error of a failed action


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False

    def by_status(self, status: Status) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(o.status == "done" for o in self.outcomes)


def ordered(actions: tuple[Action, ...]) -> list[Action]:
    """Dependency order, stable with respect to the plan's own order."""
    by_id = {a.id: a for a in actions}
    seen: set[str] = set()
    out: list[Action] = []

    def visit(action: Action, stack: tuple[str, ...]) -> None:
        if action.id in seen:
            return
        if action.id in stack:
            raise ValueError(f"dependency cycle: {' → '.join((*stack, action.id))}")
        for dep in (*action.depends_on, *action.after):
            if dep in by_id:
                visit(by_id[dep], (*stack, action.id))
        seen.add(action.id)
        out.append(action)

    for action in actions:
        visit(action, ())
    return out


def execute(
    plan: Plan,
    handlers: Mapping[Kind, Handler],
    *,
    on_start: Callable[[Action], None] | None = None,
    on_done: Callable[[Outcome], None] | None = None,
) -> Report:
    report = Report()
    status: dict[str, Status] = {}
    pending = ordered(plan.actions)
    for index, action in enumerate(pending):
        blocked = [d for d in action.depends_on if status.get(d, "done") != "done"]
        if blocked:
            outcome = Outcome(action, "skipped", f"{blocked[0]} did not complete")
        else:
            if on_start:
                on_start(action)
            start = time.monotonic()
            try:
                handler = handlers[action.kind]
                message = handler(action) or ""
                failpoint(f"after:{action.id}")  # done and recorded, not yet reported
                outcome = Outcome(action, "done", message, seconds=time.monotonic() - start)
            except KeyboardInterrupt:
                report.interrupted = True
                outcome = Outcome(action, "failed", "interrupted", seconds=time.monotonic() - start)
                status[action.id] = outcome.status
                report.outcomes.append(outcome)
                if on_done:
                    on_done(outcome)
                for rest in pending[index + 1 :]:
                    skipped = Outcome(rest, "skipped", "interrupted")
                    report.outcomes.append(skipped)
                    if on_done:
                        on_done(skipped)
                return report
            except LocalAIError as exc:
                outcome = Outcome(
                    action, "failed", str(exc), exc.hint, time.monotonic() - start, exc
                )
            except Exception as exc:  # a bug in one handler must not hide the others' results
                if is_disk_full(exc):  # not a bug: say which disk, as a typed error would
                    full = disk_full_error(exc, f"running {action.id}")
                    outcome = Outcome(
                        action, "failed", str(full), full.hint, time.monotonic() - start, full
                    )
                else:
                    if settings.debug():
                        traceback.print_exc()
                    outcome = Outcome(
                        action,
                        "failed",
                        f"{type(exc).__name__}: {exc}",
                        "this is a bug in local-ai; rerun with LOCAL_AI_DEBUG=1 and report it",
                        seconds=time.monotonic() - start,
                    )
        status[action.id] = outcome.status
        report.outcomes.append(outcome)
        if on_done:
            on_done(outcome)
    return report
