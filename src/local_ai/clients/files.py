"""Client file I/O: read, write atomically with a timestamped backup, and the ownership ledgers
(LOCAL_AI_HOME/clients/<client>.json)."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from local_ai import settings
from local_ai.clients.base import Ledger
from local_ai.errors import ConfigError
from local_ai.util.atomic import atomic_write_text
from local_ai.util.failpoints import failpoint

MAX_FILE_BYTES = 4 * 1024 * 1024
BACKUP_MARK = ".local-ai-backup-"
KEEP_BACKUPS = 5


def read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a settings file", path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror}", path=path) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"is {len(raw)} bytes, too large for a settings file", path=path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"is not UTF-8 text (byte {exc.start})", path=path) from None


def real_path(path: Path) -> Path:
    """Edit the file a symlink points at (dotfile managers link settings files), never the link."""
    return Path(os.path.realpath(path))


def backups_of(path: Path) -> list[Path]:
    """Backups next to `path`, oldest first (the names sort by time)."""
    real = real_path(path)
    if not real.parent.is_dir():
        return []
    return sorted(real.parent.glob(f"{real.name}{BACKUP_MARK}*"))


def write_with_backup(
    path: Path,
    text: str | None,
    *,
    now: datetime | None = None,
    keep: int = KEEP_BACKUPS,
    keep_copy: bool = True,
) -> Path | None:
    """Replace `path` with `text` (None deletes it) after copying it aside as
    `<name>.local-ai-backup-<UTC time>`; keeps the newest `keep` backups. Returns the backup."""
    real = real_path(path)
    backup = None
    if keep_copy and real.exists():
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
        backup = real.with_name(f"{real.name}{BACKUP_MARK}{stamp}")
        n = 1
        while backup.exists():
            n += 1
            backup = real.with_name(f"{real.name}{BACKUP_MARK}{stamp}-{n}")
        shutil.copy2(real, backup)
        failpoint("client.backup-written")  # the user's file copied aside, not yet replaced
    if text is None:
        real.unlink(missing_ok=True)
    else:
        atomic_write_text(real, text)
    for old in backups_of(real)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return backup


def ledger_dir() -> Path:
    return settings.home() / "clients"


def ledger_path(client: str) -> Path:
    return ledger_dir() / f"{client}.json"


def load_ledger(client: str) -> Ledger | None:
    path = ledger_path(client)
    text = read_text(path)
    if text is None:
        return None
    try:
        return Ledger.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"is not a local-ai client record: {exc}",
            path=path,
            hint="delete it; local-ai then treats the client's current settings as the user's",
        ) from None


def save_ledger(client: str, ledger: Ledger | None) -> None:
    path = ledger_path(client)
    if ledger is None:
        path.unlink(missing_ok=True)
        return
    # 0600: `previous` values can hold a token the user had in their settings.
    text = json.dumps(ledger.to_json(), indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(path, text, mode=0o600)
