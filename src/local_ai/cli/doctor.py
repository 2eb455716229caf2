"""`local-ai doctor`: environment checks with a pass/fail table and the fix for each failure."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from local_ai import settings
from local_ai.cli.options import ConfigOption, JsonOption
from local_ai.cli.output import console, print_json
from local_ai.errors import LocalAIError, ManifestError, NotFoundError

if TYPE_CHECKING:
    from local_ai.cluster.observe import HostReport
    from local_ai.manifest.models import ClusterSettings

Status = Literal["pass", "warn", "fail", "info"]
GIB = 1024**3
MIN_FREE_DISK = 20 * GIB


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


ClusterOption = Annotated[
    bool,
    typer.Option(
        "--cluster",
        help="Check the [cluster] hosts instead: ssh, versions, an MLX all-reduce across them, "
        "Thunderbolt/RDMA readiness.",
    ),
]


def doctor_command(
    config: ConfigOption = None, json: JsonOption = False, cluster: ClusterOption = False
) -> None:
    """Check this machine for local-ai: platform, memory, disk, port, HF cache, network, MLX."""
    manifest_file = settings.manifest_path(config)
    checks = run_cluster_checks(manifest_file) if cluster else run_checks(manifest_file)
    failed = any(c.status == "fail" for c in checks)
    if json:
        print_json({"ok": not failed, "checks": [asdict(c) for c in checks]})
    else:
        from rich.markup import escape
        from rich.table import Table

        marks = {
            "pass": "[green]✓ pass[/]",
            "warn": "[yellow]! warn[/]",
            "fail": "[red]✗ fail[/]",
            "info": "[blue]i info[/]",
        }
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        table.add_column("check")
        table.add_column("status")
        table.add_column("detail", overflow="fold")
        for c in checks:
            detail = escape(c.detail)
            if c.fix and c.status != "pass":
                detail += f"\n[dim]fix: {escape(c.fix)}[/]"
            table.add_row(c.name, marks[c.status], detail)
        console().print(table)
        console().print(
            "[red]some checks failed[/]"
            if failed
            else "[green]the cluster is ready[/]"
            if cluster
            else "[green]local-ai can run here[/]"
        )
    if failed:
        raise typer.Exit(1)


def run_checks(manifest_file: Path) -> list[Check]:
    steps: list[Callable[[], Check]] = [
        _platform,
        _python,
        _memory,
        lambda: _disk(settings.home()),
        _state_home,
        lambda: _manifest(manifest_file),
        lambda: _port(manifest_file),
        _hf_cache,
        _network,
        _mlx,
    ]
    results = []
    for step in steps:
        try:
            results.append(step())
        except Exception as exc:  # a broken check must not hide the others
            name = getattr(step, "__name__", "check").strip("_")
            results.append(Check(name, "fail", f"check crashed: {type(exc).__name__}: {exc}"))
    return results


def _platform() -> Check:
    from local_ai.hardware import detect

    hw = detect()
    if hw.backend == "metal":
        return Check("platform", "pass", f"{hw.describe()}, Metal GPU")
    return Check(
        "platform",
        "warn",
        f"{hw.describe()}: MLX CPU backend (development and tests; models run far faster on "
        "Apple Silicon)",
        fix="use a Mac with Apple Silicon for everyday use",
    )


def _python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    return Check("python", "pass", f"Python {version} at {sys.executable}")


def _memory() -> Check:
    from local_ai.hardware import detect

    hw = detect()
    total, usable = hw.total_memory_bytes / GIB, hw.usable_memory_bytes / GIB
    detail = f"{total:.0f} GB total, {usable:.1f} GB usable for models"
    if usable < 4:
        return Check("memory", "fail", detail, fix="close other apps; even small models need 4 GB")
    if usable < 12:
        return Check("memory", "warn", detail + ": only small models fit", fix=None)
    return Check("memory", "pass", detail)


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _disk(home: Path) -> Check:
    free = shutil.disk_usage(_existing_parent(home)).free
    detail = f"{free / GIB:.1f} GB free for {home}"
    if free < 2 * GIB:
        return Check("disk", "fail", detail, fix="free disk space or set LOCAL_AI_HOME elsewhere")
    if free < MIN_FREE_DISK:
        return Check("disk", "warn", detail + ": large models need 20 GB or more", fix=None)
    return Check("disk", "pass", detail)


def _state_home() -> Check:
    home = settings.home()
    parent = _existing_parent(home)
    if os.access(parent, os.W_OK):
        return Check("state home", "pass", f"{home} (set LOCAL_AI_HOME to move it)")
    return Check(
        "state home",
        "fail",
        f"{home} is not writable",
        fix=f"fix the permissions of {parent} or set LOCAL_AI_HOME",
    )


def _manifest(path: Path) -> Check:
    from local_ai.manifest.load import load_manifest

    try:
        loaded = load_manifest(path)
    except NotFoundError:
        return Check("manifest", "warn", f"no manifest at {path}", fix="run `local-ai init`")
    except ManifestError as exc:
        return Check(
            "manifest",
            "fail",
            f"{len(exc.problems)} problem(s); first: {exc.problems[0]}",
            fix="run `local-ai validate` for every problem",
        )
    except LocalAIError as exc:
        return Check("manifest", "fail", str(exc), fix=exc.hint)
    count = len(loaded.manifest.models)
    return Check("manifest", "pass", f"{path}: valid, {count} model(s)")


def _port(manifest_file: Path) -> Check:
    from local_ai.manifest.load import load_manifest
    from local_ai.util.ports import port_free, port_holder

    host, port = "127.0.0.1", 8080
    try:
        server = load_manifest(manifest_file).manifest.server
        host, port = server.host, server.port
    except LocalAIError:
        pass  # reported by the manifest check; probe the default
    if port_free(host, port):
        return Check("port", "pass", f"{host}:{port} is free")
    holder = port_holder(port)
    who = holder.describe() if holder else "another process"
    if holder and holder.name and "local-ai" in holder.name:
        return Check("port", "info", f"{host}:{port} is used by {who}")
    return Check(
        "port",
        "warn",
        f"{host}:{port} is in use by {who}",
        fix=f"stop {who}, or set server.port in {manifest_file}",
    )


def _hf_cache() -> Check:
    cache = settings.hf_hub_cache()
    if not cache.exists():
        return Check("HF cache", "info", f"{cache} (empty; created on the first download)")
    repos = sum(1 for p in cache.iterdir() if p.name.startswith("models--"))
    if not os.access(cache, os.W_OK):
        return Check("HF cache", "fail", f"{cache} is not writable", fix="fix its permissions")
    return Check("HF cache", "pass", f"{cache}: {repos} model repo(s) cached, reused by local-ai")


def _network() -> Check:
    if settings.hf_offline():
        return Check(
            "network",
            "info",
            "offline mode (HF_HUB_OFFLINE=1): only models already in the store or HF cache",
        )
    import httpx

    endpoint = settings.hf_endpoint()
    try:
        httpx.head(f"{endpoint}/api/models", timeout=3.0)
    except httpx.HTTPError as exc:
        return Check(
            "network",
            "warn",
            f"{endpoint} unreachable ({type(exc).__name__}); models already fetched keep working",
            fix="set HF_HUB_OFFLINE=1 to work offline without waiting on the network",
        )
    return Check("network", "pass", f"{endpoint} reachable")


def _mlx() -> Check:
    try:
        import mlx.core as mx
    except Exception as exc:
        return Check(
            "mlx",
            "fail",
            f"import mlx.core failed: {exc}",
            fix="reinstall local-ai (`uv tool install --reinstall local-ai`)",
        )
    from importlib.metadata import version

    return Check("mlx", "pass", f"mlx {version('mlx')} on {mx.default_device()}")


# ---- --cluster --------------------------------------------------------------------------------


def run_cluster_checks(manifest_file: Path) -> list[Check]:
    """The [cluster] hosts: reachable over ssh, same versions as rank 0, an all-reduce across
    them with mlx.launch, and Thunderbolt/RDMA readiness on the Macs."""
    from local_ai.cluster.observe import observe_hosts, rank_order
    from local_ai.manifest.load import load_manifest

    try:
        cluster = load_manifest(manifest_file).manifest.cluster
    except LocalAIError as exc:
        return [Check("manifest", "fail", str(exc), fix=exc.hint or "run `local-ai validate`")]
    if cluster is None:
        return [
            Check(
                "cluster",
                "fail",
                f"{manifest_file} has no [cluster] table",
                fix="declare the hosts under [cluster.hosts.NAME] (docs/cluster.md)",
            )
        ]
    reports = observe_hosts(cluster)
    checks = [_host_check(cluster, reports, name) for name in rank_order(cluster)]
    checks += [_versions_check(cluster, reports, name) for name in rank_order(cluster)[1:]]
    checks.append(_all_reduce_check(cluster, reports))
    checks += _thunderbolt_checks(cluster)
    return checks


def _host_check(cluster: ClusterSettings, reports: dict[str, HostReport], name: str) -> Check:
    report = reports[name]
    label = f"host {name}" + (" (rank 0)" if name == cluster.rank0 else "")
    if not report.reachable:
        dest = cluster.hosts[name].ssh
        return Check(
            label,
            "fail",
            report.error or "unreachable",
            fix=f"make `ssh -o BatchMode=yes {dest} true` work from here (key-based login, "
            "host key accepted)",
        )
    summary = report.hardware.describe() if report.hardware else "memory unknown"
    if report.error:
        return Check(label, "fail", f"{summary}; {report.error}", fix=_INSTALL_FIX)
    return Check(label, "pass", summary)


_INSTALL_FIX = (
    "install local-ai on that host as on this machine, or set its `python` (docs/cluster.md)"
)


def _versions_check(cluster: ClusterSettings, reports: dict[str, HostReport], name: str) -> Check:
    from local_ai.reconcile.cluster import version_problems

    label = f"versions {name}"
    if not reports[name].reachable:
        return Check(label, "info", "not checked: the host is unreachable")
    problems = version_problems(cluster, [name], reports)
    if problems:
        return Check(
            label, "fail", "; ".join(p.split(": ", 1)[1] for p in problems), fix=_INSTALL_FIX
        )
    shown = ", ".join(f"{p} {v}" for p, v in reports[name].versions)
    return Check(label, "pass", f"same as rank 0: {shown}")


def _all_reduce_check(cluster: ClusterSettings, reports: dict[str, HostReport]) -> Check:
    import tempfile

    from local_ai.cluster.launch import run_smoke, starting_port

    label = f"{cluster.backend} all-reduce"
    down = [n for n, r in reports.items() if not r.reachable]
    if down:
        return Check(label, "fail", f"not run: {', '.join(down)} unreachable", fix="fix ssh first")
    with tempfile.TemporaryDirectory(prefix="local-ai-smoke-") as work:
        result = run_smoke(cluster, Path(work), starting_port(cluster))
    detail = f"{result.detail} in {result.seconds:.1f} s over mlx.launch"
    if result.ok:
        return Check(label, "pass", detail)
    tail = " | ".join(line for line in result.output.strip().splitlines()[-3:])
    return Check(
        label,
        "fail",
        detail + (f": {tail}" if tail else ""),
        fix="check each host's `address` (reachable from every other host, ports from the "
        "launcher's --starting-port open) and that mlx is installed for its `python`",
    )


def _thunderbolt_checks(cluster: ClusterSettings) -> list[Check]:
    from local_ai.cluster.thunderbolt import check_hosts, problems

    seen = check_hosts(cluster)
    found = problems(cluster, seen)
    checks = []
    for name, ready in seen.items():
        label = f"thunderbolt {name}"
        if not ready.reachable:
            continue  # the host check reports it
        if ready.system != "Darwin":
            checks.append(Check(label, "info", f"{ready.system or 'not macOS'}: not checked"))
            continue
        links = ", ".join(
            f"{p.interface or '?'} → {peer}"
            for peer, other in seen.items()
            for p in ready.cabled_to(other)
        )
        detail = (
            f"macOS {ready.macos or '?'}; RDMA {ready.rdma_status or 'status unknown'}, "
            f"devices: {', '.join(ready.rdma_devices) or 'none'}; "
            f"Thunderbolt links: {links or 'none'}"
        )
        if found.get(name):
            checks.append(Check(label, "fail", f"{detail}; " + "; ".join(found[name])))
        else:
            checks.append(Check(label, "pass", detail))
    return checks
