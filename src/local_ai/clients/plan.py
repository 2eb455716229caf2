"""Client configs, reconciled: observe the files (I/O), plan the edits (pure), apply one change
(I/O: atomic write with a timestamped backup, then the ownership ledger).

The reconciler calls `observe_clients` while taking its snapshot, `plan_clients` from the pure
planner, and `apply_client_change` from a WRITE_CLIENT action.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from local_ai import settings
from local_ai.clients import claude_code, codex, goose, zed
from local_ai.clients.base import (
    FORMATS,
    ClientChange,
    DocumentError,
    FileEdit,
    FileRecord,
    Ledger,
    drift,
    merge,
)
from local_ai.clients.spec import Desired, FileSpec
from local_ai.errors import ClientFileChangedError, ConfigError, LocalAIError
from local_ai.manifest.models import Manifest
from local_ai.util.change import Change

# client name -> (manifest attribute under [clients], desired-state function, display name)
CLIENTS: dict[str, tuple[str, Callable[[Manifest, str], Desired], str]] = {
    zed.NAME: ("zed", zed.desired, "Zed"),
    claude_code.NAME: ("claude_code", claude_code.desired, "Claude Code"),
    goose.NAME: ("goose", goose.desired, "Goose"),
    codex.NAME: ("codex", codex.desired, "Codex"),
}


def is_enabled(manifest: Manifest, client: str) -> bool:
    """Does the manifest configure `client` and leave it enabled?"""
    cfg = getattr(manifest.clients, CLIENTS[client][0])
    return cfg is not None and bool(cfg.enabled)


def resource_name(client: str) -> str:
    return f"client.{client}"


@dataclass(frozen=True)
class ClientsObserved:
    """One snapshot of the client files and of what local-ai recorded writing."""

    targets: Mapping[str, Mapping[str, Path]]  # client -> file role -> path, per the manifest
    files: Mapping[Path, str | None]  # text of every target and recorded file (None: absent)
    ledgers: Mapping[str, Ledger] = field(default_factory=dict)
    unreadable: Mapping[Path, str] = field(default_factory=dict)  # path -> why

    def fingerprint(self) -> str:
        """Identity of this snapshot (for a plan's observed-state fingerprint): paths, file
        contents by hash and the ledgers."""
        data = {
            "targets": {c: {r: str(p) for r, p in t.items()} for c, t in self.targets.items()},
            "files": {
                str(p): None if t is None else hashlib.sha256(t.encode()).hexdigest()
                for p, t in self.files.items()
            },
            "ledgers": {c: ledger.to_json() for c, ledger in self.ledgers.items()},
            "unreadable": {str(p): why for p, why in self.unreadable.items()},
        }
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


# ----------------------------------------------------------------------------- locations


def default_locations() -> dict[str, Path]:
    """Where each client keeps its config by default on this machine, as the client itself
    decides (its own directory overrides included)."""
    home = Path.home()
    # Zed: ~/.config/zed on macOS whatever XDG says; the XDG config directory on Linux.
    zed_dir = (
        home / ".config" / "zed" if settings.is_macos() else settings.xdg_config_home() / "zed"
    )
    claude_dir = settings.client_env_dir(settings.ENV_CLAUDE_CONFIG_DIR) or home / ".claude"
    # Goose: $GOOSE_PATH_ROOT/config, else the XDG config directory on macOS and Linux alike.
    goose_root = settings.client_env_dir(settings.ENV_GOOSE_PATH_ROOT)
    goose_dir = goose_root / "config" if goose_root else settings.xdg_config_home() / "goose"
    return {
        "zed.settings": zed_dir / "settings.json",
        "claude-code.settings": claude_dir / "settings.json",
        "goose.dir": goose_dir,
        "codex.dir": settings.client_env_dir(settings.ENV_CODEX_HOME) or home / ".codex",
    }


def _user_path(raw: str, base_dir: Path | None) -> Path:
    path = Path(raw).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def resolve_targets(
    manifest: Manifest, defaults: Mapping[str, Path], base_dir: Path | None = None
) -> dict[str, dict[str, Path]]:
    """Each declared client's files: the manifest's override or the default (pure).
    Relative overrides are relative to the manifest's directory."""
    clients = manifest.clients
    out: dict[str, dict[str, Path]] = {}
    if clients.zed is not None:
        raw = clients.zed.settings_path
        out[zed.NAME] = {"settings": _user_path(raw, base_dir) if raw else defaults["zed.settings"]}
    if clients.claude_code is not None:
        raw = clients.claude_code.settings_path
        out[claude_code.NAME] = {
            "settings": _user_path(raw, base_dir) if raw else defaults["claude-code.settings"]
        }
    if clients.goose is not None:
        raw = clients.goose.config_dir
        root = _user_path(raw, base_dir) if raw else defaults["goose.dir"]
        out[goose.NAME] = {
            "provider": root / goose.PROVIDER_FILE,
            "config": root / goose.CONFIG_FILE,
        }
    if clients.codex is not None:
        raw = clients.codex.config_dir
        root = _user_path(raw, base_dir) if raw else defaults["codex.dir"]
        out[codex.NAME] = {"config": root / codex.CONFIG_FILE} | {
            f"profile:{name}": root / f"{name}{codex.PROFILE_SUFFIX}"
            for name in codex.profiles(manifest)
        }
    return out


# ------------------------------------------------------------------------------- observe


def observe_clients(manifest: Manifest, *, base_dir: Path | None = None) -> ClientsObserved:
    """Read every client file the manifest or a ledger names, and the ledgers (I/O)."""
    from local_ai.clients.files import load_ledger, read_text

    targets = resolve_targets(manifest, default_locations(), base_dir)
    ledgers: dict[str, Ledger] = {}
    for client in CLIENTS:
        ledger = load_ledger(client)
        if ledger is not None:
            ledgers[client] = ledger
    paths = {p for roles in targets.values() for p in roles.values()}
    paths |= {Path(f.path) for ledger in ledgers.values() for f in ledger.files}
    files: dict[Path, str | None] = {}
    unreadable: dict[Path, str] = {}
    for path in sorted(paths):
        try:
            files[path] = read_text(path)
        except ConfigError as exc:
            unreadable[path] = exc.message
    return ClientsObserved(targets, files, ledgers, unreadable)


# ---------------------------------------------------------------------------------- plan


def _file_plans(
    desired: Desired | None, targets: Mapping[str, Path], ledger: Ledger | None
) -> list[tuple[Path, FileSpec]]:
    plans = [(targets[spec.role], spec) for spec in desired.files] if desired else []
    wanted = {str(path) for path, _ in plans}
    # Files recorded earlier but no longer wanted (client disabled or moved): restore them.
    for record in ledger.files if ledger else ():
        if record.path not in wanted:
            plans.append((Path(record.path), FileSpec("restore", record.format, {})))
    return plans


def _plan_one(
    client: str,
    manifest: Manifest,
    server_url: str,
    observed: ClientsObserved,
) -> ClientChange | None:
    attr, build, title = CLIENTS[client]
    cfg = getattr(manifest.clients, attr)
    enabled = is_enabled(manifest, client)
    ledger = observed.ledgers.get(client)
    resource = resource_name(client)
    if not enabled and ledger is None:
        if cfg is None:
            return None
        return ClientChange(client, resource, Change.NOOP, "disabled in the manifest")
    desired = build(manifest, server_url) if enabled else None
    plans = _file_plans(desired, observed.targets.get(client, {}), ledger)
    edits: list[FileEdit] = []
    records: list[FileRecord] = []
    lines: list[str] = []
    for path, spec in plans:
        if path in observed.unreadable:
            return _failed(client, f"{path}: {observed.unreadable[path]}")
        before = observed.files.get(path)
        record = ledger.file(str(path)) if ledger else None
        fmt = FORMATS[spec.format]
        try:
            after, new_record = merge(fmt, str(path), before, spec.desired, record)
            prefix = path.name if len(plans) > 1 else ""
            lines += drift(fmt, before, spec.desired, record, spec.secret, prefix)
        except DocumentError as exc:
            where = f":{exc.line}:{exc.column}" if exc.line is not None else ""
            return _failed(client, f"{path}{where}: {exc}", title)
        ours = after is None and record is not None and record.created_file
        edits.append(FileEdit(path, before, after, backup=not ours))
        if new_record is not None:
            records.append(new_record)
    new_ledger = Ledger(client, tuple(records)) if records else None
    ledger_changed = (ledger.to_json() if ledger else None) != (
        new_ledger.to_json() if new_ledger else None
    )
    text_changed = any(e.changed for e in edits)
    base = ClientChange(
        client,
        resource,
        Change.NOOP,
        "matches the manifest",
        drift=tuple(lines),
        edits=tuple(edits),
        ledger=new_ledger,
        ledger_changed=ledger_changed,
        notes=desired.notes if desired else (),
        secrets=desired.secrets if desired else (),
    )
    if not text_changed and not ledger_changed:
        return base
    if not enabled:
        why = "disabled" if cfg is not None else "removed from the manifest"
        cause = f"{why}: restore what local-ai changed in {title}'s settings"
        return replace(base, change=Change.DELETE, cause=cause)
    if ledger is None:
        cause = f"configure {title} for local-ai" if text_changed else "already configured"
        return replace(base, change=Change.CREATE, cause=cause)
    count = len(lines)
    cause = f"{count} difference{'s' if count != 1 else ''} from the manifest"
    return replace(base, change=Change.UPDATE, cause=cause)


def _failed(client: str, message: str, title: str | None = None) -> ClientChange:
    who = title or CLIENTS[client][2]
    return ClientChange(
        client,
        resource_name(client),
        Change.NOOP,
        f"cannot edit {who}'s settings",
        error=f"{message} (fix the file, or point local-ai elsewhere in [clients])",
    )


def plan_clients(
    manifest: Manifest, server_url: str | None, observed: ClientsObserved
) -> list[ClientChange]:
    """One change per client that is declared in the manifest or recorded in a ledger. Pure.
    `server_url` defaults to where the manifest's server listens (spec.server_url)."""
    from local_ai.clients.spec import server_url as manifest_server_url

    server_url = server_url or manifest_server_url(manifest)
    changes = []
    for client in CLIENTS:
        change = _plan_one(client, manifest, server_url, observed)
        if change is not None:
            changes.append(change)
    return changes


def unified_diff(change: ClientChange) -> str:
    """The planned edits as a unified diff per file, secrets masked."""
    import difflib

    out: list[str] = []
    for edit in change.edits:
        if not edit.changed:
            continue
        before = change.masked(edit.before or "").splitlines(keepends=True)
        after = change.masked(edit.after or "").splitlines(keepends=True)
        name = str(edit.path)
        lines = difflib.unified_diff(
            before,
            after,
            fromfile="/dev/null" if edit.before is None else name,
            tofile="/dev/null" if edit.after is None else name,
        )
        out += [line if line.endswith("\n") else line + "\n" for line in lines]
    return "".join(out)


# --------------------------------------------------------------------------------- apply


def apply_client_change(change: ClientChange, *, now: datetime | None = None) -> list[Path]:
    """Carry out one planned change; returns the backups made. Refuses if a file changed since
    it was observed. The ledger is written before the files when local-ai keeps owning
    something (a crash then leaves the user's values recorded as theirs) and removed after
    them when it no longer does."""
    from local_ai.clients.files import read_text, save_ledger, write_with_backup

    if change.error is not None:
        raise LocalAIError(change.error)
    if not change.has_changes:
        return []
    pending = [e for e in change.edits if e.changed]
    for edit in pending:
        if read_text(edit.path) != edit.before:
            raise ClientFileChangedError(edit.path)
    if change.ledger is not None:
        save_ledger(change.client, change.ledger)
    backups = []
    for edit in pending:
        backup = write_with_backup(edit.path, edit.after, now=now, keep_copy=edit.backup)
        if backup is not None:
            backups.append(backup)
    if change.ledger is None:
        save_ledger(change.client, None)
    return backups


def describe_result(change: ClientChange, backups: list[Path]) -> str:
    """One line for the executor's summary: what was written where, and the backups."""
    title = CLIENTS[change.client][2]
    if not change.has_changes:
        return f"{title}: {change.cause}"
    done = [f"{e.action} {e.path}" for e in change.edits if e.changed]
    text = f"{title}: " + ("; ".join(done) if done else "ownership record updated")
    if backups:
        text += f" (backup: {', '.join(str(b) for b in backups)})"
    return text
