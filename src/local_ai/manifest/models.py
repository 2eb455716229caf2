"""The manifest (`local-ai.toml`) as pydantic models: the single source of what the user wants.

Field descriptions feed the JSON schema (schemas/local-ai.schema.json) and the generated
manifest reference (docs/manifest.md), so they are written for people editing the file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MANIFEST_VERSION: Literal[1] = 1

QuantizeLevel = Literal[
    "q2",
    "q3",
    "q4",
    "q5",
    "q6",
    "q8",
    "mxfp4",
    "mixed_3_6",
    "mixed_4_6",
    "bf16",
    "fp16",
    "auto",
]
QUANTIZE_LEVELS: tuple[str, ...] = get_args(QuantizeLevel)
GroupSize = Literal[32, 64, 128]

# Aliases are the model ids clients send; no "/" so an alias can never be mistaken for a
# HuggingFace repo id or a path.
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
REPO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
_DURATION_RE = re.compile(r"^(\d+)\s*(s|m|h|d)$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 (names, not a bind)
# Git's rules for ref names, as far as a revision reaches a URL or a cache path: no '..', no
# control characters or spaces, no leading '/' or '-', none of ~^:?*[\\.
_REVISION_RE = re.compile(r"(?!-)(?!/)(?!.*\.\.)(?!.*//)[^\x00-\x20\x7f~^:?*\[\\]{1,255}(?<!/)\Z")


def control_char_problem(value: str) -> str | None:
    """Why `value` cannot be written to a terminal, a header or a path, or None."""
    bad = next((ch for ch in value if ord(ch) < 32 or ord(ch) == 127), None)
    return None if bad is None else f"contains a control character ({bad!r})"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def parse_duration(value: str) -> int:
    """'30m' -> 1800 seconds. '0s' disables the timer."""
    match = _DURATION_RE.match(value.strip())
    if not match:
        raise ValueError(
            f"{value!r} is not a duration; write a number and a unit, e.g. '30m' or '2h'"
        )
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EngineSettings(_Strict):
    """Settings of the inference engine. Changing any of them restarts the engine."""

    max_loaded_models: Annotated[int, Field(ge=1, le=16)] = Field(
        default=2,
        description="How many models the engine keeps in memory at once (least recently used is "
        "unloaded first).",
    )
    idle_ttl: str = Field(
        default="30m",
        description="Unload a model after it has been idle this long ('0s' keeps models loaded). "
        "Units: s, m, h, d.",
    )
    max_queued_requests: Annotated[int, Field(ge=0, le=1024)] = Field(
        default=16,
        description="Requests allowed to wait for the engine; beyond this the server answers 503 "
        "with Retry-After.",
    )
    prompt_cache: bool = Field(
        default=True,
        description="Reuse the key/value cache of shared prompt prefixes across requests.",
    )
    max_batch_size: Annotated[int, Field(ge=1, le=64)] = Field(
        default=8,
        description="Generations the engine runs at once, decoded together in one batched step "
        "per model; more wait in the queue (see max_queued_requests).",
    )
    prompt_cache_disk_mb: Annotated[int, Field(ge=0, le=1_048_576)] = Field(
        default=4096,
        description="Disk space (MiB) for saved KV caches of long prompt prefixes, reused after "
        "an engine restart or an idle unload; least recently used go first. 0 disables.",
    )

    @field_validator("idle_ttl")
    @classmethod
    def _check_ttl(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def idle_ttl_seconds(self) -> int:
        return parse_duration(self.idle_ttl)


class ServerSettings(_Strict):
    """The local gateway that Zed, Goose and Claude Code talk to."""

    host: str = Field(
        default="127.0.0.1",
        description="Address to bind. Anything other than loopback requires `api_key`.",
    )
    port: Annotated[int, Field(ge=1, le=65535)] = Field(default=8080, description="TCP port.")
    api_key: str | None = Field(
        default=None,
        min_length=8,
        description="Require this key on /v1 and /anthropic/v1 (Bearer or x-api-key). Prefer "
        "`api_key_env` for manifests kept in dotfiles.",
    )
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of an environment variable holding the API key.",
    )
    default_model: str | None = Field(
        default=None,
        description="Alias used when a request names no model, and preselected on the web page. "
        "Default: the first `preload` alias, else the alphabetically first alias.",
    )
    preload: list[str] = Field(
        default_factory=list,
        description="Aliases loaded into memory as soon as the engine starts.",
    )
    autostart: bool = Field(
        default=True,
        description="Let `local-ai apply` start the server when it is not running.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Exact origins (scheme://host:port) allowed to call the API from a browser.",
    )
    max_body_mb: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=32, description="Largest request body accepted, in MiB."
    )
    engine: EngineSettings = Field(default_factory=EngineSettings)

    @field_validator("api_key")
    @classmethod
    def _check_key(cls, value: str | None) -> str | None:
        if value is not None and (control_char_problem(value) or " " in value):
            raise ValueError("the API key must be printable characters without spaces")
        return value

    @model_validator(mode="after")
    def _check_exposure(self) -> ServerSettings:
        if self.api_key and self.api_key_env:
            raise ValueError("set either api_key or api_key_env, not both")
        if not is_loopback(self.host) and not (self.api_key or self.api_key_env):
            raise ValueError(
                f"host {self.host!r} is not loopback, so the API would be open to the network; "
                "set server.api_key_env (or api_key), or bind 127.0.0.1"
            )
        return self

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*" or not re.match(r"^https?://[^/\s]+$", origin):
                raise ValueError(
                    f"{origin!r} is not an exact origin; "
                    "write scheme://host[:port], no path, no '*'"
                )
        return value


class ModelSpec(_Strict):
    """One model, served under its alias (the table name)."""

    repo: str | None = Field(
        default=None,
        pattern=REPO_PATTERN,
        description="HuggingFace repo id, e.g. 'mlx-community/Qwen3-8B-4bit'.",
    )
    file: str | None = Field(
        default=None,
        description="A GGUF file inside `repo` to convert, e.g. 'Qwen3-8B-Q8_0.gguf'.",
    )
    path: str | None = Field(
        default=None,
        description="A local model directory or .gguf file instead of a repo ('~' is expanded).",
    )
    revision: str | None = Field(
        default=None,
        description="Branch, tag or commit of `repo`. Default: main, pinned in local-ai.lock.",
    )
    quantize: QuantizeLevel | None = Field(
        default=None,
        description="Quantization to convert to. Omit to serve an MLX repo as published.",
    )
    group_size: GroupSize = Field(
        default=64, description="Quantization group size (affine levels q2..q8)."
    )
    context: Annotated[int, Field(ge=256, le=2_097_152)] = Field(
        default=32768,
        description="Context length in tokens the server allows (prompt + output); sizes the "
        "KV-cache memory estimate.",
    )
    max_output_tokens: Annotated[int, Field(ge=1, le=1_048_576)] = Field(
        default=8192, description="Largest reply, advertised to clients such as Zed."
    )
    name: str | None = Field(default=None, description="Display name shown in editors.")
    extra_files: list[str] = Field(
        default_factory=list,
        description="Extra file patterns to fetch beyond weights, configs and tokenizer files. "
        "Code and pickle files are never fetched unless listed here.",
    )
    min_tokens_per_second: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="Overrides benchmark.min_tokens_per_second for this model."
    )
    hosts: list[Annotated[str, Field(pattern=ALIAS_PATTERN)]] | None = Field(
        default=None,
        description="Shard this model across these `[cluster.hosts]`, in rank order; the first "
        "must be `cluster.rank0` (this machine, running the gateway). Omit to serve it on this "
        "Mac alone.",
    )
    parallel: Literal["pipeline", "tensor"] | None = Field(
        default=None,
        description="How a model placed on `hosts` is split: 'pipeline' (each host runs a "
        "slice of the layers) or 'tensor' (each layer is split across hosts; more traffic "
        "between them). Required with `hosts`.",
    )

    @field_validator("path", "file", "name")
    @classmethod
    def _check_text(cls, value: str | None) -> str | None:
        problem = control_char_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(f"{value!r} {problem}")
        return value

    @field_validator("revision")
    @classmethod
    def _check_revision(cls, value: str | None) -> str | None:
        if value is not None and not _REVISION_RE.match(value):
            raise ValueError(
                f"{value!r} is not a branch, tag or commit name (no '..', spaces, control "
                "characters or any of ~^:?*[\\)"
            )
        return value

    @model_validator(mode="after")
    def _check_source(self) -> ModelSpec:
        if (self.repo is None) == (self.path is None):
            raise ValueError("give exactly one source: `repo` (HuggingFace) or `path` (local)")
        if self.file is not None:
            if self.repo is None:
                raise ValueError("`file` names a GGUF file inside `repo`; set `repo` too")
            if not self.file.lower().endswith(".gguf"):
                raise ValueError(f"`file` must be a .gguf file, got {self.file!r}")
            if self.file.startswith("/") or ".." in self.file.split("/") or "\\" in self.file:
                raise ValueError(f"`file` must be a path inside the repo, got {self.file!r}")
        if self.revision is not None and self.repo is None:
            raise ValueError("`revision` applies to `repo` only")
        if self.hosts is None:
            if self.parallel is not None:
                raise ValueError("`parallel` applies to a model placed on `hosts`; add `hosts`")
            return self
        if len(self.hosts) < 2:
            raise ValueError(
                "`hosts` shards a model across at least 2 hosts; remove it to serve the model "
                "on this Mac alone"
            )
        if len(set(self.hosts)) != len(self.hosts):
            raise ValueError("`hosts` names a host twice; each rank is a different host")
        if self.parallel is None:
            raise ValueError(
                'a model placed on `hosts` needs `parallel = "pipeline"` (layers split '
                'across hosts) or `parallel = "tensor"` (every layer split)'
            )
        if self.quantize == "auto":
            raise ValueError(
                "quantize = 'auto' picks a level for one Mac; name a level for a model placed "
                "on `hosts`"
            )
        return self

    @property
    def source_label(self) -> str:
        if self.path is not None:
            return self.path
        label = str(self.repo)
        if self.file:
            label += f":{self.file}"
        if self.revision:
            label += f"@{self.revision}"
        return label


class BenchmarkSettings(_Strict):
    """Benchmarks run by `local-ai apply` for new or rebuilt models."""

    on_apply: bool = Field(default=True, description="Benchmark new or rebuilt models on apply.")
    prompt_tokens: Annotated[int, Field(ge=1, le=131072)] = Field(
        default=512, description="Prompt length used by the benchmark."
    )
    gen_tokens: Annotated[int, Field(ge=1, le=8192)] = Field(
        default=128, description="Tokens generated per benchmark request."
    )
    min_tokens_per_second: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="Report a failure when decode speed is below this."
    )
    gate: bool = Field(
        default=False,
        description="Do not switch the server to a generation whose new models are slower than "
        "min_tokens_per_second or fail a configured client's requests (tool-call round trip "
        "included); without it, those are reported only.",
    )


class ZedClient(_Strict):
    """Zed's `language_models.openai_compatible` provider."""

    enabled: bool = True
    models: list[str] | None = Field(
        default=None, description="Aliases Zed sees. Default: every model."
    )
    provider_name: str = Field(
        default="local-ai", description="Provider name under language_models.openai_compatible."
    )
    settings_path: str | None = Field(
        default=None, description="Zed settings file. Default: ~/.config/zed/settings.json."
    )


class ClaudeCodeClient(_Strict):
    """Claude Code's `env` block in its settings file."""

    enabled: bool = True
    model: str | None = Field(default=None, description="Alias for the default model.")
    opus: str | None = Field(default=None, description="Alias for the opus tier.")
    sonnet: str | None = Field(default=None, description="Alias for the sonnet tier.")
    haiku: str | None = Field(default=None, description="Alias for the haiku (fast) tier.")
    subagent: str | None = Field(default=None, description="Alias for subagents.")
    settings_path: str | None = Field(
        default=None, description="Settings file. Default: ~/.claude/settings.json."
    )


class GooseClient(_Strict):
    """A Goose custom provider (OpenAI engine)."""

    enabled: bool = True
    models: list[str] | None = Field(
        default=None, description="Aliases Goose sees. Default: every model."
    )
    config_dir: str | None = Field(
        default=None, description="Goose config directory. Default: ~/.config/goose."
    )


class CodexClient(_Strict):
    """Codex CLI: a `model_providers` entry in config.toml and a profile file per alias."""

    enabled: bool = True
    model: str | None = Field(
        default=None,
        description="Alias Codex uses when no profile is given. Default: the default model.",
    )
    models: list[str] | None = Field(
        default=None,
        description="Aliases that get a profile (`codex --profile <alias>`). Default: every model.",
    )
    provider_id: str = Field(
        default="local-ai",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Key of the provider under model_providers.",
    )
    config_dir: str | None = Field(
        default=None, description="Codex's home directory. Default: $CODEX_HOME, else ~/.codex."
    )


class Clients(_Strict):
    """Editor and agent configs written by `local-ai apply`."""

    zed: ZedClient | None = None
    claude_code: ClaudeCodeClient | None = None
    goose: GooseClient | None = None
    codex: CodexClient | None = None


# mlx.launch puts the destination unquoted into a shell command: letters, digits and the
# punctuation of user@host, IPv6 and scoped addresses only; never a leading '-' (an ssh option).
_SSH_DEST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@:%+-]{0,254}$")
_RDMA_DEVICE_RE = r"^rdma_[A-Za-z0-9]+$"


def _host_path(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith(("/", "~/")) or control_char_problem(value):
        raise ValueError(f"{value!r} must be an absolute path on that host (or start with '~/')")
    return value


class ClusterHost(_Strict):
    """One machine of the cluster (the table name is the host's name in `hosts = [...]`)."""

    ssh: str | None = Field(
        default=None,
        description="ssh destination (`user@host` or a Host from ~/.ssh/config); local-ai runs "
        "ssh in batch mode, so key-based login must work. Not needed for `cluster.rank0`.",
    )
    address: str | None = Field(
        default=None,
        description="IP address the MLX backend uses to reach this host (e.g. its Thunderbolt "
        "bridge address). Required by the ring backend, and for rank 0 by jaccl.",
    )
    python: str | None = Field(
        default=None,
        description="Python of the environment on that host where local-ai, mlx and mlx-lm are "
        "installed. Default: the same path as on this machine (mlx.launch's convention).",
    )
    home: str | None = Field(
        default=None,
        description="local-ai's data directory on that host (its LOCAL_AI_HOME). Default: that "
        "host's own default.",
    )
    rdma: dict[Annotated[str, Field(pattern=ALIAS_PATTERN)], str] = Field(
        default_factory=dict,
        description="jaccl only: the RDMA device on this host that is cabled to each other host, "
        'e.g. { mini = "rdma_en3" } (see `ibv_devices`).',
    )

    @field_validator("ssh")
    @classmethod
    def _check_ssh(cls, value: str | None) -> str | None:
        if value is not None and not _SSH_DEST_RE.match(value):
            raise ValueError(
                f"{value!r} is not an ssh destination; write `user@host` or a Host name from "
                "~/.ssh/config (letters, digits and . _ @ : % + -, not starting with '-')"
            )
        return value

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address; mlx.launch connects ranks by IP "
                "(e.g. '192.168.2.2')"
            ) from None
        return value

    @field_validator("python", "home")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        return _host_path(value)

    @field_validator("rdma")
    @classmethod
    def _check_rdma(cls, value: dict[str, str]) -> dict[str, str]:
        for peer, device in value.items():
            if not re.match(_RDMA_DEVICE_RE, device):
                raise ValueError(
                    f"rdma.{peer} = {device!r} is not an RDMA device name; `ibv_devices` lists "
                    "them, e.g. 'rdma_en3'"
                )
        return value


class ClusterSettings(_Strict):
    """Macs that serve models too big for one: each model placed on `hosts` is sharded across
    them with MLX's distributed launcher (see docs/cluster.md)."""

    backend: Literal["ring", "jaccl"] = Field(
        default="ring",
        description="MLX distributed backend: 'ring' (TCP, over Ethernet or a Thunderbolt "
        "bridge) or 'jaccl' (RDMA over Thunderbolt 5, macOS 26.2 and later).",
    )
    rank0: str = Field(
        pattern=ALIAS_PATTERN,
        description="The host that is this machine: it runs the gateway and is rank 0 of every "
        "sharded model.",
    )
    hosts: dict[Annotated[str, Field(pattern=ALIAS_PATTERN)], ClusterHost] = Field(
        description="The machines, by name.",
    )

    @model_validator(mode="after")
    def _check_hosts(self) -> ClusterSettings:
        names = list(self.hosts)
        if self.rank0 not in self.hosts:
            raise ReferenceProblem(
                "cluster.rank0",
                f"{self.rank0!r} is not a host; declared hosts: {', '.join(names) or 'none'}",
            )
        if len(self.hosts) < 2:
            raise ReferenceProblem(
                "cluster.hosts", "a cluster needs at least 2 hosts under [cluster.hosts.NAME]"
            )
        for name, host in self.hosts.items():
            where = f"cluster.hosts.{name}"
            if host.ssh is None and name != self.rank0:
                raise ReferenceProblem(
                    where,
                    'ssh is required: local-ai reaches this host with ssh (set ssh = "user@host")',
                )
            needs_address = self.backend == "ring" or name == self.rank0
            if host.address is None and needs_address:
                why = (
                    "the ring backend connects every rank by IP address"
                    if self.backend == "ring"
                    else "jaccl's coordinator runs on rank 0 and is reached by IP address"
                )
                raise ReferenceProblem(where, f"address is required: {why}")
            for peer in host.rdma:
                if peer not in self.hosts or peer == name:
                    raise ReferenceProblem(
                        f"{where}.rdma.{peer}",
                        f"{peer!r} is not another host; rdma keys name the peer host a device is "
                        "cabled to",
                    )
            if self.backend == "jaccl":
                missing = [p for p in names if p != name and p not in host.rdma]
                if missing:
                    raise ReferenceProblem(
                        where,
                        f"backend 'jaccl' needs an RDMA device to every other host; missing "
                        f"rdma for {', '.join(missing)} (e.g. rdma = {{ {missing[0]} = "
                        '"rdma_en3" })',
                    )
        return self


class Manifest(_Strict):
    """local-ai.toml: models, quantizations and server settings for this machine."""

    version: Literal[1] = Field(
        default=MANIFEST_VERSION, description="Manifest format version. Always 1 for now."
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    models: dict[Annotated[str, Field(pattern=ALIAS_PATTERN)], ModelSpec] = Field(
        default_factory=dict,
        description="Models by alias. The alias is the model id clients send.",
    )
    benchmark: BenchmarkSettings = Field(default_factory=BenchmarkSettings)
    clients: Clients = Field(default_factory=Clients)
    cluster: ClusterSettings | None = Field(
        default=None,
        description="Other Macs that models placed on `hosts` are sharded across.",
    )

    @model_validator(mode="after")
    def _check_references(self) -> Manifest:
        known = list(self.models)
        refs: list[tuple[str, str]] = []
        if self.server.default_model is not None:
            refs.append(("server.default_model", self.server.default_model))
        refs += [(f"server.preload[{i}]", a) for i, a in enumerate(self.server.preload)]
        clients = self.clients
        if clients.zed and clients.zed.models is not None:
            refs += [(f"clients.zed.models[{i}]", a) for i, a in enumerate(clients.zed.models)]
        if clients.goose and clients.goose.models is not None:
            refs += [(f"clients.goose.models[{i}]", a) for i, a in enumerate(clients.goose.models)]
        if clients.codex and clients.codex.models is not None:
            refs += [(f"clients.codex.models[{i}]", a) for i, a in enumerate(clients.codex.models)]
        if clients.codex and clients.codex.model is not None:
            refs.append(("clients.codex.model", clients.codex.model))
        if clients.claude_code:
            for tier in ("model", "opus", "sonnet", "haiku", "subagent"):
                alias = getattr(clients.claude_code, tier)
                if alias is not None:
                    refs.append((f"clients.claude_code.{tier}", alias))
        for key, alias in refs:
            if alias not in self.models:
                choices = ", ".join(known) if known else "none declared yet"
                raise ReferenceProblem(
                    key, f"{alias!r} is not a model alias; declared aliases: {choices}"
                )
        self._check_placements()
        return self

    def _check_placements(self) -> None:
        for alias, spec in self.models.items():
            if spec.hosts is None:
                continue
            if self.cluster is None:
                raise ReferenceProblem(
                    f"models.{alias}.hosts",
                    "places the model on hosts, but there is no [cluster]; declare the machines "
                    "under [cluster.hosts.NAME] (docs/cluster.md)",
                )
            for i, host in enumerate(spec.hosts):
                if host not in self.cluster.hosts:
                    raise ReferenceProblem(
                        f"models.{alias}.hosts[{i}]",
                        f"{host!r} is not a host; declared hosts: {', '.join(self.cluster.hosts)}",
                    )
            if spec.hosts[0] != self.cluster.rank0:
                raise ReferenceProblem(
                    f"models.{alias}.hosts",
                    f"rank 0 must be {self.cluster.rank0!r} (cluster.rank0, the machine running "
                    f"the gateway); list it first",
                )

    @property
    def default_alias(self) -> str | None:
        """server.default_model, else the first preloaded model, else the first alias in
        alphabetical order (never file order: reordering tables must not change meaning)."""
        if self.server.default_model:
            return self.server.default_model
        if self.server.preload:
            return self.server.preload[0]
        return min(self.models, default=None)

    def fingerprint(self) -> str:
        """Hash of the meaning of the manifest: key order, comments and formatting do not count."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class ReferenceProblem(ValueError):
    """A problem found across tables (an alias or host that does not exist, a placement that
    contradicts [cluster]); carries the key path it belongs to."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def manifest_json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://local-ai.dev/schemas/local-ai.schema.json"
    schema["title"] = "local-ai.toml"
    # Pydantic emits patternProperties for alias keys; make editors flag a bad alias too.
    schema["properties"]["models"]["additionalProperties"] = False
    schema["$defs"]["ClusterSettings"]["properties"]["hosts"]["additionalProperties"] = False
    return schema
