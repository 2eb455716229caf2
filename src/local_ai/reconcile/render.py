"""One deterministic text form of a plan (the CLI's output and the tests' oracle), and JSON."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from local_ai.clients.base import ClientChange
from local_ai.reconcile.model import CopyParams, HostPlan, Plan
from local_ai.util.change import Change

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
    counts = {"add": 0, "change": 0, "replace": 0, "remove": 0, "blocked": 0}
    names = {
        Change.CREATE: "add",
        Change.UPDATE: "change",
        Change.REPLACE: "replace",
        Change.BLOCKED: "blocked",
    }
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
            if isinstance(action.params, CopyParams):
                extras.append(f"copy {_size(action.params.bytes)}")
            if action.peak_memory_bytes:
                extras.append(f"peak {_size(action.peak_memory_bytes)}")
            tail = f"  {', '.join(extras)}" if extras else ""
            cause = f"  [{action.cause}]" if action.cause != res.cause else ""
            lines.append(f"      {action.kind.value:<13}{tail}{cause}".rstrip())
    if plan.cluster:
        lines.append("")
        lines.append(f"cluster ({plan.cluster})")
        for host in plan.hosts:
            lines += _host_lines(host)
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
    copy = sum(h.copy_bytes for h in plan.hosts)
    lines.append("")
    c = summary_counts(plan)
    blocked = f" {c['blocked']} not planned (!)." if c["blocked"] else ""
    if plan.has_changes:
        footprint = (
            f"Download {_size(download)} · disk +{_size(disk)} · peak memory "
            f"{_size(plan.peak_memory)} of {_size(plan.usable_memory)} usable"
        )
        if copy:
            footprint += f" · copy {_size(copy)} to hosts"
        lines.append(footprint)
        lines.append(
            f"Plan: {c['add']} to add, {c['change']} to change, {c['replace']} to replace, "
            f"{c['remove']} to remove.{blocked}"
        )
    elif blocked:
        lines.append(f"No changes for what could be planned;{blocked}")
    else:
        lines.append("No changes. Everything matches the manifest.")
    return "\n".join(lines) + "\n"


def _host_lines(host: HostPlan) -> list[str]:
    lines = [f"  {host.name}  ({host.summary})"]
    for share in host.shares:
        lines.append(
            f"      {share.alias}  rank {share.rank} of {share.ranks}, {share.part}: weights "
            f"{_size(share.weights)} + KV cache {_size(share.kv_cache)}"
        )
    if host.single_mac:
        lines.append(f"      single-Mac models loaded beside them: {_size(host.single_mac)}")
    if host.usable is not None:
        lines.append(
            f"      peak {_size(host.peak)} of {_size(host.usable)} usable · "
            f"copy {_size(host.copy_bytes)}"
        )
    return lines


def to_json(plan: Plan) -> dict[str, Any]:
    data = asdict(plan)
    for action, shown in zip(plan.actions, data["actions"], strict=True):
        if isinstance(action.params, ClientChange):  # what changes, never contents or secrets
            shown["params"] = action.params.to_json()
    data["format_version"] = 1
    data["has_changes"] = plan.has_changes
    data["summary"] = summary_counts(plan)
    return data
