"""macOS LaunchAgent: run the server in the foreground at login, restarted if it crashes.

The plist is built as a dict and rendered with plistlib, so Linux tests can parse and check it.
"""

from __future__ import annotations

import contextlib
import os
import plistlib
import subprocess
from pathlib import Path
from typing import Any

from local_ai import settings
from local_ai.errors import LocalAIError, NotYetError
from local_ai.server.daemon import server_command
from local_ai.util.atomic import atomic_write_bytes

LABEL = "dev.local-ai.server"
# Variables the server (or huggingface_hub inside it) reads, passed through when set.
PASSTHROUGH_ENV = (
    settings.ENV_DEBUG,
    settings.ENV_HF_HOME,
    "HF_HUB_CACHE",
    settings.ENV_HF_OFFLINE,
    settings.ENV_HF_ENDPOINT,
)
DEFAULT_PATH = "/usr/local/bin:/opt/homebrew/bin:/usr/bin:/bin:/usr/sbin:/sbin"


def plist_path(home: Path | None = None) -> Path:
    return (home or Path.home()) / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def build_plist(
    manifest: Path,
    *,
    state_home: Path | None = None,
    python: str | None = None,
    environ: dict[str, str] | None = None,
    api_key_env: str | None = None,
) -> dict[str, Any]:
    """The LaunchAgent: `python -m local_ai server start --foreground -c <manifest>` with the
    state home, PATH and HF variables it needs, logging to <home>/logs/server.log."""
    env = dict(os.environ if environ is None else environ)
    home = state_home or settings.paths().root
    paths = settings.Paths(home)
    variables = {
        settings.ENV_HOME: str(home),
        settings.ENV_CONFIG: str(manifest),
        "PATH": env.get("PATH") or DEFAULT_PATH,
        "PYTHONUNBUFFERED": "1",
    }
    for name in PASSTHROUGH_ENV:
        if env.get(name):
            variables[name] = env[name]
    if api_key_env and env.get(api_key_env):
        # launchd jobs do not see the login shell's variables; the plist is written 0600.
        variables[api_key_env] = env[api_key_env]
    return {
        "Label": LABEL,
        "ProgramArguments": server_command(manifest, python=python),
        "EnvironmentVariables": variables,
        "WorkingDirectory": str(home),
        "StandardOutPath": str(paths.server_log),
        "StandardErrorPath": str(paths.server_log),
        "RunAtLoad": True,
        # Restart after a crash, not after `local-ai server stop` (which exits 0).
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,
        # Interactive: not throttled like background jobs, generation speed matters.
        "ProcessType": "Interactive",
    }


def render_plist(plist: dict[str, Any]) -> bytes:
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML, sort_keys=True)


def _launchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["launchctl", *args], capture_output=True, text=True, check=False, timeout=30
    )


def _require_macos() -> None:
    if not settings.is_macos():
        raise NotYetError(
            "launchd LaunchAgents exist only on macOS",
            hint="use `local-ai server enable --print` to see the plist, or run "
            "`local-ai server start --foreground` under your own service manager",
        )


def enable(plist: dict[str, Any], *, target: Path | None = None) -> Path:
    """Write the LaunchAgent and load it (replacing a loaded one)."""
    _require_macos()
    path = target or plist_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, render_plist(plist), mode=0o600)
    Path(plist["StandardOutPath"]).parent.mkdir(parents=True, exist_ok=True)
    domain = f"gui/{os.getuid()}"
    with contextlib.suppress(OSError):
        _launchctl("bootout", f"{domain}/{LABEL}")
    result = _launchctl("bootstrap", domain, str(path))
    if result.returncode != 0:
        raise LocalAIError(
            f"launchctl bootstrap failed: {result.stderr.strip() or result.stdout.strip()}",
            hint=f"check the plist with `plutil -lint {path}`",
        )
    return path


def disable(*, target: Path | None = None) -> bool:
    """Unload and remove the LaunchAgent; False when none was installed."""
    _require_macos()
    path = target or plist_path()
    _launchctl("bootout", f"gui/{os.getuid()}/{LABEL}")
    if not path.exists():
        return False
    path.unlink()
    return True
