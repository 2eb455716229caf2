"""Every environment variable local-ai reads, and every default path, in one place.

Values are read on each call (not at import) so tests and long-running processes see the
environment as it is now.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "local-ai"
MANIFEST_NAME = "local-ai.toml"
LOCK_NAME = "local-ai.lock"

# Environment variables owned by local-ai.
ENV_HOME = "LOCAL_AI_HOME"
ENV_CONFIG = "LOCAL_AI_CONFIG"
ENV_DEBUG = "LOCAL_AI_DEBUG"
# Crash-safety tests only: the named point where the process kills itself (util/failpoints.py).
ENV_FAILPOINT = "LOCAL_AI_FAILPOINT"
# ... and what happens there: "kill" (default, SIGKILL) or "stop" (SIGSTOP, to hold a process at
# a known point while another runs; the concurrency tests).
ENV_FAILPOINT_ACTION = "LOCAL_AI_FAILPOINT_ACTION"
# Passed through to huggingface_hub (it reads them itself, at import time).
ENV_HF_HOME = "HF_HOME"
ENV_HF_ENDPOINT = "HF_ENDPOINT"
ENV_HF_OFFLINE = "HF_HUB_OFFLINE"
ENV_HF_TOKEN = "HF_TOKEN"  # noqa: S105 (a variable name, not a secret)
ENV_HF_TOKEN_PATH = "HF_TOKEN_PATH"  # noqa: S105

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
_TRUTHY = {"1", "true", "yes", "on"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUTHY


def default_home() -> Path:
    """Per-platform user data directory (macOS: ~/Library/Application Support/local-ai)."""
    from platformdirs import user_data_path

    return user_data_path(APP_NAME, appauthor=False)


def home() -> Path:
    raw = os.environ.get(ENV_HOME)
    return Path(raw).expanduser() if raw else default_home()


def debug() -> bool:
    return _flag(ENV_DEBUG)


def failpoint() -> str | None:
    """The armed failpoint, `name` or `name@N` (see util/failpoints.py); None when unset."""
    return os.environ.get(ENV_FAILPOINT) or None


def failpoint_stops() -> bool:
    """The armed failpoint pauses the process (SIGSTOP) instead of killing it."""
    return os.environ.get(ENV_FAILPOINT_ACTION, "").strip().lower() == "stop"


def hf_offline() -> bool:
    return _flag(ENV_HF_OFFLINE)


def hf_endpoint() -> str:
    return os.environ.get(ENV_HF_ENDPOINT, DEFAULT_HF_ENDPOINT).rstrip("/")


def hf_home() -> Path:
    raw = os.environ.get(ENV_HF_HOME)
    if raw:
        return Path(raw).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface"


def hf_hub_cache() -> Path:
    raw = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(raw).expanduser() if raw else hf_home() / "hub"


def hf_token() -> str | None:
    """The user's HF token as huggingface_hub would find it (env, then the token file), read now:
    the client itself froze these paths when it was imported."""
    raw = os.environ.get(ENV_HF_TOKEN) or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not raw:
        token_path = os.environ.get(ENV_HF_TOKEN_PATH)
        path = Path(token_path).expanduser() if token_path else hf_home() / "token"
        try:
            raw = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            return None
    token = raw.replace("\r", "").replace("\n", "").strip()
    return token or None


def user_config_dir() -> Path:
    """~/.config/local-ai on every platform: easy to keep in dotfiles."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / APP_NAME


# Read by the editors and agents local-ai configures, so it edits the files they read.
ENV_CLAUDE_CONFIG_DIR = "CLAUDE_CONFIG_DIR"
ENV_GOOSE_PATH_ROOT = "GOOSE_PATH_ROOT"
ENV_CODEX_HOME = "CODEX_HOME"


def xdg_config_home() -> Path:
    """$XDG_CONFIG_HOME when absolute (the XDG rule), else ~/.config."""
    raw = os.environ.get("XDG_CONFIG_HOME", "")
    path = Path(raw).expanduser() if raw else None
    return path if path is not None and path.is_absolute() else Path.home() / ".config"


def client_env_dir(name: str) -> Path | None:
    """A client's directory override (CLAUDE_CONFIG_DIR, GOOSE_PATH_ROOT, CODEX_HOME), when set."""
    raw = os.environ.get(name, "").strip()
    return Path(raw).expanduser() if raw else None


def manifest_path(explicit: Path | None = None) -> Path:
    """The manifest to use: --config, $LOCAL_AI_CONFIG, ./local-ai.toml if present, else the
    user's ~/.config/local-ai/local-ai.toml (where `local-ai init` writes by default)."""
    if explicit is not None:
        return explicit.expanduser()
    raw = os.environ.get(ENV_CONFIG)
    if raw:
        return Path(raw).expanduser()
    local = Path.cwd() / MANIFEST_NAME
    if local.exists():
        return local
    return user_config_dir() / MANIFEST_NAME


def lock_path(manifest: Path) -> Path:
    return manifest.with_name(LOCK_NAME)


def is_macos() -> bool:
    return sys.platform == "darwin"


@dataclass(frozen=True)
class Paths:
    """Layout of the state home; see docs/architecture.md."""

    root: Path

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def incoming(self) -> Path:
        """Store entries being copied here from a cluster's rank 0 (resumable, see cluster/copy)."""
        return self.root / "incoming"

    @property
    def holds(self) -> Path:
        """cluster/holds/<entry>/: which cluster's rank 0 serves which store entry from here."""
        return self.root / "cluster" / "holds"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def generations(self) -> Path:
        return self.root / "generations"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def apply_lock(self) -> Path:
        return self.run / "apply.lock"

    @property
    def verified_hashes(self) -> Path:
        """Hashes of HF cache blobs already checked (skips re-hashing unchanged files)."""
        return self.root / "cache" / "verified-blobs.json"

    @property
    def prompt_cache(self) -> Path:
        """KV caches of long prompt prefixes saved by the engine (safe to delete)."""
        return self.root / "cache" / "prompts"

    @property
    def server_pidfile(self) -> Path:
        return self.run / "server.json"

    @property
    def admin_token(self) -> Path:
        return self.run / "admin-token"

    @property
    def aliases_file(self) -> Path:
        return self.run / "aliases.json"

    @property
    def engine_socket(self) -> Path:
        return self.run / "engine.sock"

    @property
    def engine_config(self) -> Path:
        return self.run / "engine.json"

    def group_file(self, alias: str, suffix: str) -> Path:
        """run/cluster/<alias><suffix>: a sharded alias's hostfile, engine config and socket."""
        return self.run / "cluster" / f"{alias}{suffix}"

    def group_log(self, alias: str) -> Path:
        return self.logs / f"cluster-{alias}.log"

    @property
    def server_log(self) -> Path:
        return self.logs / "server.log"

    @property
    def engine_log(self) -> Path:
        return self.logs / "engine.log"


def paths() -> Paths:
    return Paths(home())
