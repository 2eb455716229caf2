"""One deterministic text form of a plan (the CLI's output and the tests' oracle), and JSON."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from local_ai.reconcile.model import Change, Plan

GIB = 1024**3


def _size(n: int) -> str:
    if n >= GIB:
        return f"{n / GIB:.1f} GB"
    if n >= 1024**2:
        return f"{n / 1024**2:.1f} MB"
    if n >= 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n} B"


def summary_counts(plan: Plan) -> dict[str, int]:
    counts = {"add": 0, "change": 0, "replace": 0, "remove": 0}
    names = {Change.CREATE: "add", Change.UPDATE: "change", Change.REPLACE: "replace"}
    for res in plan.resources:
        if res.change is Change.DELETE:
            counts["remove"] += 1
        elif res.change in names:
            counts[names[res.change]] += 1
    return counts


def render_text(plan: Plan) -> str:
    lines: list[str] = []
    for res in plan.resources:
        symbol = res.change.value
        lines.append(f"{symbol:>3} {res.resource}  ({res.cause})")
        for action in plan.actions:
            if action.resource != res.resource:
                continue
            extras = []
            if action.detail:
                extras.append(action.detail)
            if action.download_bytes:
                extras.append(f"download {_size(action.download_bytes)}")
            if action.disk_bytes and action.kind.value == "convert":
                extras.append(f"disk {_size(action.disk_bytes)}")
            if action.peak_memory_bytes:
                extras.append(f"peak {_size(action.peak_memory_bytes)}")
            tail = f"  {', '.join(extras)}" if extras else ""
            cause = f"  [{action.cause}]" if action.cause != res.cause else ""
            lines.append(f"      {action.kind.value:<13}{tail}{cause}".rstrip())
    if plan.warnings:
        lines.append("")
        lines += [f"warning: {w}" for w in plan.warnings]
    if plan.errors:
        lines.append("")
        lines += [f"error: {e}" for e in plan.errors]
        lines.append("")
        lines.append("Plan failed: nothing will be changed.")
        return "\n".join(lines) + "\n"
    download = sum(a.download_bytes or 0 for a in plan.actions)
    disk = sum(a.disk_bytes or 0 for a in plan.actions)
    lines.append("")
    if plan.has_changes:
        footprint = (
            f"Download {_size(download)} · disk +{_size(disk)} · peak memory "
            f"{_size(plan.peak_memory)} of {_size(plan.usable_memory)} usable"
        )
        lines.append(footprint)
        c = summary_counts(plan)
        lines.append(
            f"Plan: {c['add']} to add, {c['change']} to change, {c['replace']} to replace, "
            f"{c['remove']} to remove."
        )
    else:
        lines.append("No changes. Everything matches the manifest.")
    return "\n".join(lines) + "\n"


def to_json(plan: Plan) -> dict[str, Any]:
    data = asdict(plan)
    data["format_version"] = 1
    data["has_changes"] = plan.has_changes
    data["summary"] = summary_counts(plan)
    return data
