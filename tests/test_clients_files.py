"""Where client files live on macOS and Linux, and how they are written: atomically, after a
timestamped backup, through symlinks, with a rerun converging after a failure mid-apply."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from local_ai import settings
from local_ai.clients import files
from local_ai.clients.files import backups_of, ledger_path, load_ledger, write_with_backup
from local_ai.clients.plan import apply_client_change, observe_clients, plan_clients
from local_ai.errors import ConfigError, DiskSpaceError
from local_ai.manifest.models import Manifest

URL = "http://127.0.0.1:8080"
T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_client_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CLAUDE_CONFIG_DIR", "GOOSE_PATH_ROOT", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)


def manifest(**clients: object) -> Manifest:
    return Manifest.model_validate(
        {"models": {"coder": {"repo": "org/coder"}}, "clients": clients or {"zed": {}}}
    )


def write_all(m: Manifest) -> list[Path]:
    backups: list[Path] = []
    for change in plan_clients(m, URL, observe_clients(m)):
        backups += apply_client_change(change, now=T0)
    return backups


def written(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------- locations


@pytest.mark.parametrize(
    ("macos", "expected"),
    [
        (
            True,
            [
                ".claude/settings.json",
                ".config/goose/config.yaml",
                ".config/goose/custom_providers/custom_local_ai.json",
                ".config/zed/settings.json",
            ],
        ),
        (
            False,
            [
                ".claude/settings.json",
                "xdg/goose/config.yaml",
                "xdg/goose/custom_providers/custom_local_ai.json",
                "xdg/zed/settings.json",
            ],
        ),
    ],
    ids=["macos", "linux"],
)
def test_default_locations_per_platform(
    macos: bool, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Zed on macOS keeps ~/.config/zed whatever XDG_CONFIG_HOME says; on Linux it follows
    XDG, as Goose does on both. Claude Code always uses ~/.claude."""
    home = Path.home()
    monkeypatch.setattr(settings, "is_macos", lambda: macos)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    if macos:
        monkeypatch.delenv("XDG_CONFIG_HOME")  # Goose on macOS: ~/.config without XDG
    write_all(manifest(zed={}, claude_code={}, goose={}))
    assert written(home) == expected


def test_macos_zed_ignores_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path.home()
    monkeypatch.setattr(settings, "is_macos", lambda: True)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    write_all(manifest(zed={}, goose={}))
    assert written(home) == [
        ".config/zed/settings.json",
        "xdg/goose/config.yaml",
        "xdg/goose/custom_providers/custom_local_ai.json",
    ]


def test_relative_xdg_is_ignored_and_client_overrides_are_honoured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = Path.home()
    monkeypatch.setattr(settings, "is_macos", lambda: False)
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(home / "claude-alt"))
    monkeypatch.setenv("GOOSE_PATH_ROOT", str(home / "goose-root"))
    write_all(manifest(zed={}, claude_code={}, goose={}))
    assert written(home) == [
        ".config/zed/settings.json",
        "claude-alt/settings.json",
        "goose-root/config/config.yaml",
        "goose-root/config/custom_providers/custom_local_ai.json",
    ]


def test_manifest_paths_override_the_defaults(tmp_path: Path) -> None:
    m = manifest(
        zed={"settings_path": str(tmp_path / "z.json")},
        claude_code={"settings_path": "~/cc.json"},
        goose={"config_dir": str(tmp_path / "g")},
    )
    write_all(m)
    assert (tmp_path / "z.json").exists() and (Path.home() / "cc.json").exists()
    assert (tmp_path / "g" / "custom_providers" / "custom_local_ai.json").exists()


# ------------------------------------------------------------------------------ writing


def test_backup_is_an_exact_copy_with_a_utc_timestamp(tmp_path: Path) -> None:
    target = tmp_path / "settings.json"
    target.write_text("old\n")
    target.chmod(0o640)
    backup = write_with_backup(target, "new\n", now=T0)
    assert backup == tmp_path / "settings.json.local-ai-backup-20260304T050607"
    assert backup.read_text() == "old\n"
    assert target.read_text() == "new\n"
    assert target.stat().st_mode & 0o777 == 0o640  # the user's permissions are kept
    second = write_with_backup(target, "newer\n", now=T0)
    assert second == tmp_path / "settings.json.local-ai-backup-20260304T050607-2"
    assert second.read_text() == "new\n"


def test_only_the_newest_backups_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "settings.json"
    target.write_text("0")
    for i in range(1, 8):
        write_with_backup(target, str(i), now=T0 + timedelta(minutes=i), keep=3)
    kept = backups_of(target)
    assert [b.read_text() for b in kept] == ["4", "5", "6"]
    assert [b.name[-6:] for b in kept] == ["051107", "051207", "051307"]


def test_symlinked_settings_are_edited_through_the_link(tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles" / "zed.json"
    dotfiles.parent.mkdir()
    dotfiles.write_text('{"theme": "One Dark"}\n')
    link = Path.home() / ".config" / "zed" / "settings.json"
    link.parent.mkdir(parents=True)
    link.symlink_to(dotfiles)
    backups = write_all(manifest(zed={}))
    assert link.is_symlink() and link.resolve() == dotfiles
    assert '"openai_compatible"' in dotfiles.read_text()
    assert backups == [dotfiles.with_name("zed.json.local-ai-backup-20260304T050607")]


def test_interrupted_write_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cfg").mkdir()
    target = tmp_path / "cfg" / "settings.json"
    target.write_text("old\n")

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(DiskSpaceError, match="no space left on the disk holding"):
        write_with_backup(target, "new\n", now=T0)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == [
        "settings.json",
        "settings.json.local-ai-backup-20260304T050607",
    ]


def test_a_failure_mid_apply_converges_on_rerun(monkeypatch: pytest.MonkeyPatch) -> None:
    """Goose has two files; the second write fails. The rerun finishes the job and removal
    still gives the user's config back exactly."""
    config = Path.home() / ".config" / "goose" / "config.yaml"
    config.parent.mkdir(parents=True)
    original = "GOOSE_PROVIDER: openai\nGOOSE_MODEL: gpt-4o\n"
    config.write_text(original)
    m = manifest(goose={})
    real = files.write_with_backup
    calls = {"n": 0}

    def flaky(path: Path, text: str | None, **kwargs: object) -> Path | None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(5, "Input/output error")
        return real(path, text, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(files, "write_with_backup", flaky)
    with pytest.raises(OSError, match="Input/output error"):
        write_all(m)
    monkeypatch.setattr(files, "write_with_backup", real)
    (change,) = plan_clients(m, URL, observe_clients(m))
    assert change.has_changes
    write_all(m)
    assert config.read_text() == 'GOOSE_PROVIDER: "custom_local_ai"\nGOOSE_MODEL: "coder"\n'
    (again,) = plan_clients(m, URL, observe_clients(m))
    assert not again.has_changes
    write_all(manifest(zed={"enabled": False}))
    assert config.read_text() == original
    assert load_ledger("goose") is None


def test_a_damaged_ledger_is_a_config_error_naming_the_fix() -> None:
    path = ledger_path("zed")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(ConfigError) as caught:
        observe_clients(manifest(zed={}))
    assert "is not a local-ai client record: unsupported ledger version 99" in str(caught.value)
    assert caught.value.hint is not None and "delete it" in caught.value.hint


def test_settings_path_that_is_a_directory_is_reported(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    m = manifest(zed={"settings_path": str(tmp_path / "dir.json")})
    (change,) = plan_clients(m, URL, observe_clients(m))
    assert change.error == (
        f"{tmp_path / 'dir.json'}: is a directory, not a settings file "
        "(fix the file, or point local-ai elsewhere in [clients])"
    )
