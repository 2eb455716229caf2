"""Thunderbolt and RDMA readiness of the Macs of a [cluster], from the system's own tools.

One sh script per host (over ssh like the observation, rank 0 here) prints marked sections:
``sw_vers -productVersion``, ``rdma_ctl status``, ``ibv_devices`` (the RDMA devices; none until
RDMA is enabled in macOS Recovery with ``rdma_ctl enable``: Apple TN3205, macOS 26.2+ with
Thunderbolt 5),
``system_profiler SPThunderboltDataType -json`` (each port's domain UUID and the UUID of the
Mac cabled to it) and ``networksetup -listallhardwareports`` (port name to interface). The
same tools mlx's own ``mlx.distributed_config`` reads.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from local_ai.cluster.observe import SSH_FAILED, rank_order, split_sections, ssh_argv
from local_ai.manifest.models import ClusterSettings

READINESS_MARK = "@@local-ai-thunderbolt 1"
JACCL_MIN_MACOS = (26, 2)
TIMEOUT_S = 30.0

READINESS_SCRIPT = "\n".join(
    [
        f"echo '{READINESS_MARK}'",
        "echo '@@system'; uname -s",
        "echo '@@sw_vers'; sw_vers -productVersion 2>/dev/null",
        "echo '@@rdma_ctl'; rdma_ctl status 2>&1",
        "echo '@@ibv_devices'; ibv_devices 2>&1",
        "echo '@@thunderbolt'; system_profiler SPThunderboltDataType -json 2>/dev/null",
        "echo '@@ports'; networksetup -listallhardwareports 2>/dev/null",
        "echo '@@end'",
        "",
    ]
)


@dataclass(frozen=True)
class Port:
    interface: str | None  # "en2"; None when networksetup does not name it
    uuid: str  # this port's Thunderbolt domain UUID
    peer: str | None  # domain UUID of the Mac cabled to it


@dataclass(frozen=True)
class Readiness:
    name: str
    reachable: bool
    system: str = ""  # "Darwin", "Linux"
    macos: str | None = None
    rdma_status: str | None = None  # `rdma_ctl status`: "enabled" or "disabled"
    rdma_devices: tuple[str, ...] = ()
    ports: tuple[Port, ...] = ()
    error: str | None = None

    @property
    def uuids(self) -> frozenset[str]:
        return frozenset(p.uuid for p in self.ports)

    def cabled_to(self, other: Readiness) -> list[Port]:
        return [p for p in self.ports if p.peer is not None and p.peer in other.uuids]


def parse_ibv_devices(text: str) -> tuple[str, ...]:
    """Device names (``rdma_en2``...) from ``ibv_devices``: the first column under its header.
    mlx's configurator keeps only names starting with ``rdma_``; so does this."""
    names = [line.split()[0] for line in text.splitlines() if line.split()]
    return tuple(n for n in names if n.startswith("rdma_"))


def parse_hardware_ports(text: str) -> dict[str, str]:
    """``networksetup -listallhardwareports``: port name → device ('Thunderbolt 1' → 'en2')."""
    ports: dict[str, str] = {}
    name: str | None = None
    for line in text.splitlines():
        if line.startswith("Hardware Port:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Device:") and name is not None:
            ports[name] = line.split(":", 1)[1].strip()
            name = None
    return ports


def parse_thunderbolt(text: str, interfaces: dict[str, str]) -> tuple[Port, ...]:
    """Ports from ``system_profiler SPThunderboltDataType -json``: each bus with a
    ``domain_uuid_key``, the UUID of a Mac in its ``_items`` (what is cabled to it), and the
    interface named ``Thunderbolt <receptacle id>``."""
    try:
        data = json.loads(text)
    except ValueError:
        return ()
    buses = data.get("SPThunderboltDataType") if isinstance(data, dict) else None
    ports = []
    for bus in buses if isinstance(buses, list) else []:
        if not isinstance(bus, dict) or not isinstance(bus.get("domain_uuid_key"), str):
            continue
        tag = bus.get("receptacle_1_tag")
        receptacle = tag.get("receptacle_id_key") if isinstance(tag, dict) else None
        items = bus.get("_items")
        cabled = [i for i in (items if isinstance(items, list) else []) if isinstance(i, dict)]
        peers = [i["domain_uuid_key"] for i in cabled if "domain_uuid_key" in i]
        ports.append(
            Port(
                interface=interfaces.get(f"Thunderbolt {receptacle}"),
                uuid=bus["domain_uuid_key"],
                peer=peers[0] if peers else None,
            )
        )
    return tuple(sorted(ports, key=lambda p: (p.interface or "", p.uuid)))


def parse_readiness(name: str, stdout: str, stderr: str, returncode: int) -> Readiness:
    if READINESS_MARK not in stdout:
        why = next(iter(reversed(stderr.strip().splitlines())), f"exit code {returncode}")
        prefix = "ssh failed: " if returncode == SSH_FAILED else ""
        return Readiness(name, reachable=False, error=prefix + why)
    sections = split_sections(stdout[stdout.index(READINESS_MARK) :])
    interfaces = parse_hardware_ports(sections.get("ports", ""))
    return Readiness(
        name,
        reachable=True,
        system=sections.get("system", "").strip(),
        macos=sections.get("sw_vers", "").strip() or None,
        rdma_status=_rdma_status(sections.get("rdma_ctl", "")),
        rdma_devices=parse_ibv_devices(sections.get("ibv_devices", "")),
        ports=parse_thunderbolt(sections.get("thunderbolt", ""), interfaces),
    )


def _rdma_status(text: str) -> str | None:
    words = text.split()
    return words[-1] if words and words[-1] in ("enabled", "disabled") else None


def _version(text: str | None) -> tuple[int, ...]:
    parts = []
    for piece in (text or "").split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def problems(cluster: ClusterSettings, seen: dict[str, Readiness]) -> dict[str, list[str]]:
    """Per host, what keeps the declared backend from running over Thunderbolt/RDMA."""
    out: dict[str, list[str]] = {}
    for name, ready in seen.items():
        found: list[str] = []
        out[name] = found
        if not ready.reachable or ready.system != "Darwin" or cluster.backend != "jaccl":
            continue
        if _version(ready.macos) < JACCL_MIN_MACOS:
            found.append(f"macOS {ready.macos or 'unknown'}: RDMA over Thunderbolt needs 26.2+")
        if not ready.rdma_devices:
            why = (
                "RDMA is disabled (`rdma_ctl status`)"
                if ready.rdma_status == "disabled"
                else "no RDMA devices (`ibv_devices` lists none)"
            )
            found.append(
                f"{why}: enable RDMA once in macOS Recovery with `rdma_ctl enable`, then "
                "reboot (Apple TN3205)"
            )
            continue
        for peer, device in sorted(cluster.hosts[name].rdma.items()):
            if device not in ready.rdma_devices:
                found.append(
                    f"rdma.{peer} = {device!r} is not one of its devices "
                    f"({', '.join(ready.rdma_devices)})"
                )
            other = seen.get(peer)
            if other is not None and other.reachable and not ready.cabled_to(other):
                found.append(f"no Thunderbolt cable to {peer} (jaccl needs every pair cabled)")
    return out


def check_hosts(cluster: ClusterSettings, timeout: float = TIMEOUT_S) -> dict[str, Readiness]:
    """Run the readiness script on every host (rank 0 here), one after another."""
    seen = {}
    for name in rank_order(cluster):
        local = name == cluster.rank0
        argv = ["/bin/sh", "-s"] if local else ssh_argv(str(cluster.hosts[name].ssh))
        try:
            done = subprocess.run(
                argv, input=READINESS_SCRIPT, capture_output=True, text=True, timeout=timeout
            )
        except (OSError, subprocess.SubprocessError) as exc:
            seen[name] = Readiness(name, reachable=False, error=str(exc))
            continue
        seen[name] = parse_readiness(name, done.stdout, done.stderr, done.returncode)
    return seen
