"""What each host of a [cluster] is, seen over ssh: one command per host, one report back.

Each host runs the same POSIX sh script (rank 0 runs it here, without ssh). It prints marked
sections: ``uname``, then ``sysctl`` (macOS) or ``/proc/meminfo`` + ``/proc/cpuinfo``
(Linux), then one JSON line from the host's local-ai Python (versions, store digests, free
disk). Parsing reuses :mod:`local_ai.hardware`'s parsers, so a remote Mac's memory and wired
limit are read exactly as this machine's are. A host that cannot be reached gives a
:class:`HostReport` with ``reachable=False`` and the reason, never an exception.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from local_ai.hardware import (
    SYSCTL_KEYS,
    Hardware,
    hardware_from_linux,
    hardware_from_sysctl,
    parse_cpuinfo,
    parse_meminfo,
    parse_sysctl,
)
from local_ai.manifest.models import ClusterHost, ClusterSettings

REPORT_MARK = "@@local-ai-host 1"
SSH_CONNECT_TIMEOUT_S = 5
OBSERVE_TIMEOUT_S = 30.0
# ssh exits 255 when it could not connect or authenticate (ssh(1), EXIT STATUS).
SSH_FAILED = 255
PACKAGES = ("local-ai", "mlx", "mlx-lm")

# Runs under the host's local-ai Python; double quotes only (the script single-quotes it).
_PY_REPORT = """
import json, shutil, sys
from importlib import metadata
from pathlib import Path
r = {"python": sys.version.split()[0], "executable": sys.executable}
for name in ("local-ai", "mlx", "mlx-lm"):
    try:
        r[name] = metadata.version(name)
    except Exception:
        r[name] = None
where = Path.home()
try:
    from local_ai import settings
    from local_ai.store.layout import Store
    paths = settings.paths()
    where = paths.store
    r["store"] = str(paths.store)
    r["digests"] = sorted({e.digest for e in Store(paths).entries()})
    from local_ai.store.holds import list_holds
    r["holds"] = sorted([h.entry, h.rank0, h.alias] for h in list_holds(paths))
except Exception as exc:
    r["error"] = f"{type(exc).__name__}: {exc}"
while not where.exists() and where != where.parent:
    where = where.parent
r["free_disk"] = shutil.disk_usage(where).free
print(json.dumps(r))
"""


@dataclass(frozen=True)
class HostReport:
    """One host as observed. Fields are None where the host did not say."""

    name: str
    reachable: bool
    error: str | None = None  # why the host could not be reached, or what it could not report
    hardware: Hardware | None = None
    free_disk: int | None = None  # bytes free on the disk holding its store
    python: str | None = None  # version of the Python that answered
    executable: str | None = None
    versions: tuple[tuple[str, str | None], ...] = ()  # (package, version or None) per PACKAGES
    store: str | None = None
    digests: tuple[str, ...] = ()  # store entries it has, sorted (hashed into plan identity)
    holds: tuple[tuple[str, str, str], ...] = ()  # (entry, rank0, alias) its holds, sorted

    def version(self, package: str) -> str | None:
        return dict(self.versions).get(package)


# ---- the command ------------------------------------------------------------------------------


def shell_path(path: str) -> str:
    """A path for the remote shell: '~/x' becomes "$HOME"/'x' (quoted, never word-split)."""
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def unshell_path(text: str) -> str:
    """The path `shell_path` quoted (a recorded group's Python back to a host's `python`)."""
    if text.startswith('"$HOME"/'):
        return "~/" + shlex.split(text[len('"$HOME"/') :])[0]
    return shlex.split(text)[0]


def report_script(python: str, home: str | None) -> str:
    """The sh script a host runs to describe itself (fed to ``sh -s`` on stdin)."""
    keys = " ".join(SYSCTL_KEYS)
    env = f"LOCAL_AI_HOME={shell_path(home)} " if home else ""
    return "\n".join(
        [
            f"echo '{REPORT_MARK}'",
            "echo '@@uname'; uname -sr 2>/dev/null",
            'case "$(uname -s)" in',
            f"Darwin) echo '@@sysctl'; for k in {keys}; do sysctl \"$k\" 2>/dev/null; done ;;",
            "*) echo '@@meminfo'; cat /proc/meminfo 2>/dev/null;"
            " echo '@@cpuinfo'; cat /proc/cpuinfo 2>/dev/null ;;",
            "esac",
            "echo '@@python'",
            f"py={shell_path(python)}",
            'if command -v "$py" >/dev/null 2>&1; then',
            f'  {env}"$py" -c {shlex.quote(_PY_REPORT)} 2>&1 | tail -n 5',
            'else echo "no Python at $py"; fi',
            "echo '@@end'",
            "",
        ]
    )


def ssh_to(destination: str) -> list[str]:
    """ssh in batch mode (never a password prompt) to `destination`; the remote command follows."""
    return [
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={SSH_CONNECT_TIMEOUT_S}",
        "-o",
        "ServerAliveInterval=15",  # a dead link ends a long copy instead of hanging it
        "--",
        destination,
    ]


def ssh_argv(destination: str) -> list[str]:
    """ssh running ``sh -s`` on ``destination`` (the script comes on stdin)."""
    return [*ssh_to(destination), "/bin/sh", "-s"]


@dataclass(frozen=True)
class HostCommand:
    name: str
    argv: tuple[str, ...]
    script: str  # stdin
    local: bool  # rank 0: run here, without ssh


def rank_order(cluster: ClusterSettings) -> list[str]:
    """Rank 0 (this machine) first, then the other hosts by name."""
    return [cluster.rank0, *sorted(n for n in cluster.hosts if n != cluster.rank0)]


def host_commands(
    cluster: ClusterSettings, removed: Mapping[str, ClusterHost] | None = None
) -> list[HostCommand]:
    """One command per host, in rank order; then each of `removed` (hosts no longer in
    [cluster.hosts] that rank 0 still holds entries on), by name."""
    removed = removed or {}
    hosts = {**removed, **cluster.hosts}
    commands = []
    for name in [*rank_order(cluster), *sorted(n for n in removed if n not in cluster.hosts)]:
        host = hosts[name]
        local = name == cluster.rank0
        argv = ["/bin/sh", "-s"] if local else ssh_argv(str(host.ssh))
        # Rank 0 is this process's own environment and home.
        python = sys.executable if local else host_python(host)
        script = report_script(python, None if local else host.home)
        commands.append(HostCommand(name, tuple(argv), script, local))
    return commands


def host_python(host: ClusterHost) -> str:
    """The Python on that host: as declared, else this machine's path (mlx.launch's default)."""
    return host.python or sys.executable


# ---- parsing ----------------------------------------------------------------------------------


def split_sections(text: str) -> dict[str, str]:
    """``@@name`` lines start sections; text before the first marker is dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@@"):
            current = sections.setdefault(line[2:].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def parse_report(name: str, stdout: str, stderr: str, returncode: int) -> HostReport:
    """A host's report from what its command printed."""
    if REPORT_MARK not in stdout:
        why = _last_line(stderr) or f"exit code {returncode}, no report"
        if returncode == SSH_FAILED:
            why = f"ssh failed: {why}"
        return HostReport(name, reachable=False, error=why)
    sections = split_sections(stdout[stdout.index(REPORT_MARK) :])
    problems: list[str] = []
    hardware = _hardware(sections, problems)
    answer = _python_answer(sections.get("python", ""), problems)
    if "end" not in sections:
        problems.append(f"the report was cut short ({_last_line(stderr) or 'no reason given'})")
    versions = tuple((p, _str(answer.get(p))) for p in PACKAGES)
    digests = answer.get("digests")
    holds = answer.get("holds")
    free = answer.get("free_disk")
    return HostReport(
        name,
        reachable=True,
        error="; ".join(problems) or None,
        hardware=hardware,
        free_disk=free if isinstance(free, int) else None,
        python=_str(answer.get("python")),
        executable=_str(answer.get("executable")),
        versions=versions,
        store=_str(answer.get("store")),
        digests=tuple(sorted({d for d in digests if isinstance(d, str)}))
        if isinstance(digests, list)
        else (),
        holds=_holds(holds),
    )


def _holds(value: object) -> tuple[tuple[str, str, str], ...]:
    if not isinstance(value, list):
        return ()
    rows = {
        (h[0], h[1], h[2])
        for h in value
        if isinstance(h, list) and len(h) == 3 and all(isinstance(x, str) for x in h)
    }
    return tuple(sorted(rows))


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _hardware(sections: Mapping[str, str], problems: list[str]) -> Hardware | None:
    uname = sections.get("uname", "").strip() or None
    try:
        if "sysctl" in sections:
            return hardware_from_sysctl(
                parse_sysctl(sections["sysctl"]), os_version=uname, source="ssh"
            )
        if "meminfo" in sections:
            system = (uname or "linux").split()[0].lower()
            return hardware_from_linux(
                parse_meminfo(sections["meminfo"]),
                parse_cpuinfo(sections.get("cpuinfo", "")),
                os_version=uname or "Linux",
                platform="linux" if system == "linux" else system,
                source="ssh",
            )
    except ValueError as exc:
        problems.append(f"cannot read its memory: {exc}")
        return None
    problems.append(f"unknown system ({uname or 'uname printed nothing'})")
    return None


def _python_answer(text: str, problems: list[str]) -> dict[str, object]:
    line = _last_line(text)
    try:
        answer = json.loads(line)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        problems.append(f"its local-ai Python did not answer ({line or 'no output'})")
        return {}
    if answer.get("error"):
        problems.append(f"local-ai is not usable there ({answer['error']})")
    return answer


# ---- running ----------------------------------------------------------------------------------


def run_host(command: HostCommand, timeout: float = OBSERVE_TIMEOUT_S) -> HostReport:
    try:
        done = subprocess.run(
            list(command.argv),
            input=command.script,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        why = f"no answer within {timeout:.0f} s"
        return HostReport(command.name, reachable=False, error=why)
    except OSError as exc:
        why = f"cannot run {command.argv[0]}: {exc}"
        return HostReport(command.name, reachable=False, error=why)
    return parse_report(command.name, done.stdout, done.stderr, done.returncode)


def observe_hosts(
    cluster: ClusterSettings,
    removed: Mapping[str, ClusterHost] | None = None,
    timeout: float = OBSERVE_TIMEOUT_S,
) -> dict[str, HostReport]:
    """Every host of the cluster (and of `removed`), observed in parallel; rank 0 first."""
    commands = host_commands(cluster, removed)
    with ThreadPoolExecutor(max_workers=min(8, len(commands))) as pool:
        reports = list(pool.map(lambda c: run_host(c, timeout), commands))
    return {r.name: r for r in reports}
