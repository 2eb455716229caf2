"""Data the planner reads and writes: observed state in, a plan of typed actions out.

Pure data only (no I/O here or in the planner), so planner tests are data cases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from local_ai.clients.base import ClientChange
from local_ai.clients.plan import ClientsObserved
from local_ai.manifest.models import ClusterHost, Manifest, ModelSpec
from local_ai.manifest.source import ResolvedSource
from local_ai.store.lockfile import LockEntry
from local_ai.util.change import Change
from local_ai.util.hashing import stable_hash

if TYPE_CHECKING:
    from local_ai.cluster.observe import HostReport


# ---------------------------------------------------------------------------- observed state


@dataclass(frozen=True)
class SourceView:
    """A source as the planner reads it: the source itself, the lock entry that pins it (None
    when it was resolved just now) and what its config.json says, for sizing."""

    source: ResolvedSource
    entry: LockEntry | None = None
    source_quantization: str | None = None  # e.g. "4bit" for an MLX repo, "Q4_K_M" for a GGUF
    source_bits: float | None = None  # bits per weight of the source, for size estimates
    num_layers: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    model_type: str | None = None  # config.json's model_type, when config.json was seen


@dataclass(frozen=True)
class InstalledView:
    """An alias as recorded in state.json, plus what observing the disk found."""

    alias: str
    spec_key: str  # install_key() of the spec it was built from
    spec: dict[str, Any]  # install_fields() of that spec, to explain what changed
    commit: str | None
    location: str
    location_kind: Literal["store", "hf-cache", "local"]
    size_bytes: int
    present: bool  # the location and its recorded files exist with the recorded sizes
    drift: str | None = None  # what changed on disk, when not present/intact
    rejected: str | None = None  # the gate (benchmark.gate) kept this build out of service, and why


@dataclass(frozen=True)
class ServerView:
    """The running server as it reports itself (its /api/status)."""

    running: bool
    pid: int | None = None
    gateway: dict[str, Any] = field(default_factory=dict)  # gateway_settings() it runs with
    engine: dict[str, Any] = field(default_factory=dict)  # engine_settings() it runs with
    aliases_hash: str | None = None  # alias_map_hash() of the map it serves
    aliases: tuple[str, ...] = ()
    rolled_back_to: int | None = None  # `local-ai rollback` made it serve this older generation


@dataclass(frozen=True)
class Observed:
    """One snapshot of what is."""

    state_serial: int
    installed: dict[str, InstalledView]
    lock: dict[str, SourceView]  # what local-ai.lock pins, entry included
    resolved: dict[str, SourceView]  # fresh resolutions for aliases the lock does not cover
    unresolved: dict[str, str]  # alias -> why it could not be resolved (offline, not found)
    cached: frozenset[str]  # aliases whose locked files are complete in the HF cache
    store_digests: frozenset[str]  # finished store entries
    server: ServerView
    usable_memory: int  # bytes the machine can give to models
    machine: str
    clients: ClientsObserved | None = None  # the client files as read (None: not observed)
    clients_error: str | None = None  # why they could not be read (a broken ledger)
    hosts: dict[str, HostReport] = field(default_factory=dict)  # [cluster] hosts, by name
    # Hosts the generation in service runs ranks on that [cluster.hosts] no longer names, as it
    # recorded them (observed in `hosts` while there is a [cluster]): its holds there to release.
    removed_hosts: dict[str, ClusterHost] = field(default_factory=dict)

    def fingerprint(self) -> str:
        data = asdict(self)
        for view in (*data["lock"].values(), *data["resolved"].values()):
            view["source"].pop("from_cache")  # how it was resolved, not what
            view["entry"] = view["entry"].model_dump() if view["entry"] else None
        data["clients"] = self.clients.fingerprint() if self.clients else None
        for host in data["hosts"].values():
            host.pop("free_disk", None)  # moves with every write there; a plan would never match
        removed = self.removed_hosts.items()
        data["removed_hosts"] = {n: h.model_dump(mode="json") for n, h in removed}
        return stable_hash(data)


# --------------------------------------------------------------------------------- the plan


class Kind(StrEnum):
    RESOLVE = "resolve"
    FETCH = "fetch"
    CONVERT = "convert"
    INSTALL = "install"  # record an alias in state (link an HF snapshot, store entry or path)
    VERIFY = "verify"
    BENCHMARK = "benchmark"
    CONFORM = "conform"  # each configured client's requests, tool round trip included
    WRITE_CLIENT = "write-client"
    RELOAD_ALIASES = "reload-aliases"
    RESTART_ENGINE = "restart-engine"
    START_SERVER = "start-server"
    RESTART_SERVER = "restart-server"
    STOP_SERVER = "stop-server"
    REMOVE = "remove"
    COPY_TO_HOST = "copy-to-host"  # a store entry to a cluster host that lacks it
    RELEASE_HOLD = "release-hold"  # a cluster host no longer serves an entry for rank 0


@dataclass(frozen=True)
class ConvertParams:
    digest: str  # the store address of the conversion
    quantize: str | None  # the level (for `auto`, the one chosen on this machine)


@dataclass(frozen=True)
class InstallParams:
    quantize: str | None
    from_store: bool  # serve the conversion in the store (else the source as fetched)


@dataclass(frozen=True)
class ServeParams:
    """Start, restart or reload: the aliases whose gate-rejected builds go in service (to be
    measured again, or because the gate is off); any other rejected build stays out."""

    admit: tuple[str, ...] = ()


@dataclass(frozen=True)
class GateParams:
    """Benchmark or conform: a failure with `gate` keeps the previous generation serving."""

    gate: bool
    floor: float | None = None  # benchmark: min_tokens_per_second
    clients: tuple[str, ...] = ()  # conform: the clients whose requests are sent


@dataclass(frozen=True)
class CopyParams:
    host: str  # the [cluster.hosts] name
    digest: str  # the store entry copied
    bytes: int


@dataclass(frozen=True)
class ReleaseParams:
    host: str  # the [cluster.hosts] name
    entry: str  # the store entry directory there, `<digest>-<name>`
    rank0: str
    alias: str


@dataclass(frozen=True)
class Action:
    id: str  # "fetch:coder"
    kind: Kind
    resource: str  # "model.coder", "server", "client.zed"
    cause: str
    depends_on: tuple[str, ...] = ()  # must have succeeded
    after: tuple[str, ...] = ()  # ordering only: runs after these whatever their outcome
    download_bytes: int | None = None  # None: known after resolve
    disk_bytes: int | None = None
    peak_memory_bytes: int | None = None
    detail: str = ""
    # What the plan decided, per kind.
    params: (
        ConvertParams
        | InstallParams
        | CopyParams
        | ReleaseParams
        | ServeParams
        | GateParams
        | ClientChange
        | None
    ) = None  # write-client: the exact edits, checked against the files before writing


@dataclass(frozen=True)
class ResourceChange:
    resource: str
    change: Change
    cause: str  # for NOOP: the reason nothing is done


@dataclass(frozen=True)
class Share:
    """The part of a sharded model one rank holds."""

    alias: str
    rank: int
    ranks: int
    part: str  # "layers 31-60" (pipeline) or "1/2 of every layer" (tensor)
    weights: int
    kv_cache: int


@dataclass(frozen=True)
class HostPlan:
    """One [cluster] host: what it is, what it will hold, and what must reach it."""

    name: str
    summary: str  # the machine and its versions, or why it cannot be used
    shares: tuple[Share, ...] = ()
    single_mac: int = 0  # rank 0: the single-Mac models the engine keeps loaded beside them
    peak: int = 0
    usable: int | None = None
    copy_bytes: int = 0


@dataclass(frozen=True)
class Plan:
    manifest_hash: str
    observed_fingerprint: str
    actions: tuple[Action, ...]
    resources: tuple[ResourceChange, ...]
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    usable_memory: int = 0
    peak_memory: int = 0
    hosts: tuple[HostPlan, ...] = ()
    cluster: str = ""  # "ring, rank 0 = studio" when the manifest has a [cluster]

    @property
    def has_changes(self) -> bool:
        return bool(self.actions)

    def action(self, action_id: str) -> Action:
        return next(a for a in self.actions if a.id == action_id)


# ------------------------------------------------------------------------- derived identities


def install_fields(spec: ModelSpec) -> dict[str, Any]:
    """The manifest fields that shape the installed bytes. Context, names and other serving
    settings are left out: changing them reloads aliases, it never rebuilds."""
    return {
        "repo": spec.repo,
        "file": spec.file,
        "path": spec.path,
        "revision": spec.revision,
        "quantize": spec.quantize,
        "group_size": spec.group_size if spec.quantize else None,
        "extra_files": sorted(spec.extra_files),
    }


def install_key(spec: ModelSpec) -> str:
    return stable_hash(install_fields(spec))[:16]


def _source_identity(source: ResolvedSource, spec: ModelSpec) -> dict[str, Any]:
    # A local path enters as the manifest writes it, so a moved project keeps its addresses.
    return {
        "repo": source.repo,
        "path": spec.path if source.kind == "path" else None,
        "commit": source.commit,
        "files": sorted((f.name, f.size, f.identity) for f in source.files),
    }


def convert_digest(source: ResolvedSource, spec: ModelSpec, converter_version: str) -> str:
    """Store address of a conversion: source commit + files + recipe + converter version."""
    return stable_hash(
        {
            **_source_identity(source, spec),
            "quantize": spec.quantize,
            "group_size": spec.group_size if spec.quantize else None,
            "converter": converter_version,
        }
    )[:16]


def needs_conversion(spec: ModelSpec, source: ResolvedSource) -> bool:
    return source.format != "mlx" or spec.quantize is not None


def served_digest(source: ResolvedSource, spec: ModelSpec, converter_version: str) -> str:
    """Identity of the files an alias serves, the name of its store entry on cluster hosts:
    the conversion's digest, or for a source served as is, its commit and files."""
    if needs_conversion(spec, source):
        return convert_digest(source, spec, converter_version)
    return stable_hash(_source_identity(source, spec))[:16]


def alias_map_hash(manifest: Manifest, commits: dict[str, str | None]) -> str:
    """Identity of the alias map the gateway should serve: which build each alias points at and
    the serving settings clients see. The gateway reports the same hash for the map it loaded."""
    entries = {
        alias: {
            "install": install_key(spec),
            "commit": commits.get(alias),
            "context": spec.context,
            "max_output_tokens": spec.max_output_tokens,
            "name": spec.name,
            **_placement(manifest, spec),
        }
        for alias, spec in manifest.models.items()
    }
    return stable_hash(
        {"models": entries, "default": manifest.default_alias, "preload": manifest.server.preload}
    )[:16]


def _placement(manifest: Manifest, spec: ModelSpec) -> dict[str, Any]:
    """What a sharded alias's group is started with: a change restarts that group only."""
    if not spec.hosts or manifest.cluster is None:
        return {}
    hosts = manifest.cluster.hosts
    return {
        "parallel": spec.parallel,
        "backend": manifest.cluster.backend,
        "hosts": [[n, hosts[n].model_dump(mode="json")] for n in spec.hosts if n in hosts],
    }
