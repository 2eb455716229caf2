"""local-ai.lock: round trip, positioned errors, manifest/lock agreement, and `local-ai lock`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from local_ai.errors import ConfigError, ExitCode, NotFoundError
from local_ai.hub import client
from local_ai.hub.fetch import fetch
from local_ai.hub.resolve import resolve
from local_ai.manifest.load import parse_manifest
from local_ai.manifest.models import ModelSpec
from local_ai.store.lockfile import (
    LockEntry,
    LockFile,
    Versions,
    entry_from_resolved,
    load_lock,
    lock_matches,
    parse_lock,
    refresh_lock,
    render_lock,
    resolved_from_entry,
    save_lock,
)
from tests.clirunner import run_cli
from tests.harness.fakehub import FakeHub
from tests.hub_repos import GGUF_REPO, MLX_REPO, add_gguf_repo, add_mlx_repo, run_inprocess

VERSIONS = Versions(converter="0.1.0", mlx="0.31.2", mlx_lm="0.31.3")
MANIFEST = f"""
[models.coder]
repo = "{MLX_REPO}"

[models."small.q4"]
repo = "{GGUF_REPO}"
file = "tiny-Q8_0.gguf"
quantize = "q4"
group_size = 32
"""


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "RETRY_DELAYS", (0.0, 0.0))


def _lock_for(hub: FakeHub) -> LockFile:
    manifest = parse_manifest(MANIFEST)
    lock, _ = refresh_lock(manifest, LockFile(), resolver=resolve, versions=VERSIONS)
    return lock


def test_round_trip_is_exact_and_deterministic(fake_hub: FakeHub) -> None:
    add_mlx_repo(fake_hub)
    add_gguf_repo(fake_hub)
    lock = _lock_for(fake_hub)

    text = render_lock(lock)

    assert parse_lock(text) == lock
    assert render_lock(parse_lock(text)) == text
    data = tomllib.loads(text)
    assert list(data["models"]) == ["coder", "small.q4"]  # sorted, dotted alias quoted
    coder = data["models"]["coder"]
    assert coder["commit"] == fake_hub.repo_sha(MLX_REPO)
    assert [f["name"] for f in coder["files"]] == sorted(f["name"] for f in coder["files"])
    weights = next(f for f in coder["files"] if f["name"] == "model.safetensors")
    assert weights["sha256"] == fake_hub.entry(MLX_REPO, "model.safetensors").blob.sha256
    assert coder["quantization"] == {"bits": 4, "group_size": 64}
    assert coder["versions"] == {"converter": "0.1.0", "mlx": "0.31.2", "mlx_lm": "0.31.3"}
    assert data["models"]["small.q4"]["recipe"] == {"quantize": "q4", "group_size": 32}
    assert "recipe" not in coder  # served as published


def test_fetch_fills_in_sha256_for_git_files_and_lock_pins_them(fake_hub: FakeHub) -> None:
    add_mlx_repo(fake_hub)
    spec = ModelSpec(repo=MLX_REPO)
    resolved = resolve("coder", spec)
    entry = entry_from_resolved(
        resolved, spec, sha256s=fetch(resolved).sha256s(), versions=VERSIONS
    )

    assert all(f.sha256 for f in entry.files)
    again = resolved_from_entry("coder", entry)
    assert again.commit == resolved.commit and again.by_name().keys() == resolved.by_name().keys()
    fake_hub.clear_requests()
    assert fetch(again).downloaded_bytes == 0
    assert fake_hub.requests == []  # a locked source needs no hub at all once cached


def test_lock_matches_explains_each_disagreement() -> None:
    entry = LockEntry(
        kind="repo",
        format="gguf",
        repo=GGUF_REPO,
        revision="main",
        commit="a" * 40,
        file="tiny-Q8_0.gguf",
        recipe={"quantize": "q4", "group_size": 64},  # type: ignore[arg-type]
        versions=VERSIONS,
    )
    same = ModelSpec(repo=GGUF_REPO, file="tiny-Q8_0.gguf", quantize="q4")
    assert lock_matches(same, entry).ok

    def why(**changes: object) -> tuple[str, ...]:
        spec = same.model_copy(update=changes)
        return lock_matches(spec, entry).reasons

    assert why(revision="v2") == ("revision changed (main → v2)",)
    assert why(file="tiny-Q4_K_M.gguf") == ("file changed (tiny-Q8_0.gguf → tiny-Q4_K_M.gguf)",)
    assert why(quantize="q8") == ("quantize changed (q4 → q8)",)
    assert why(group_size=32) == ("group size changed (64 → 32)",)
    assert why(extra_files=["*.py"]) == ("extra_files changed ([] → [*.py])",)
    assert why(repo="org/other") == ("repo changed (org/tiny-GGUF → org/other)",)
    assert lock_matches(ModelSpec(path="/m"), entry).reasons == ("source changed (repo → path)",)
    assert lock_matches(same, None).reasons == ("not in the lock file",)
    # Typed: a recipe change rebuilds from the same source; a source change resolves anew.
    recipe = lock_matches(same.model_copy(update={"quantize": "q8"}), entry)
    assert recipe.differences[0].field == "quantize" and not recipe.source_moved
    assert lock_matches(same.model_copy(update={"file": "x.gguf"}), entry).source_moved


def test_errors_name_the_line_and_key(tmp_path: Path) -> None:
    text = """version = 1

[models.coder]
kind = "repo"
format = "mlx"
repo = "org/m"
commit = "not-a-sha"

[models.coder.versions]
converter = "0.1.0"
"""
    path = tmp_path / "local-ai.lock"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_lock(path)
    assert (error.value.line, error.value.key) == (7, "models.coder.commit")
    assert "local-ai lock" in str(error.value.hint)

    hostile = text.replace('"not-a-sha"', '"' + "a" * 40 + '"') + (
        '\n[[models.coder.files]]\nname = "../../etc/passwd"\nsize = 1\n'
    )
    path.write_text(hostile)
    with pytest.raises(ConfigError, match=r"\.\./\.\./etc/passwd") as bad_name:
        load_lock(path)
    assert bad_name.value.key == "models.coder.files[0]"
    assert bad_name.value.line == 12

    path.write_text("version = 2\n")
    with pytest.raises(ConfigError, match="version 2"):
        load_lock(path)
    path.write_text("version = 1\n[models\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_lock(path)
    assert load_lock(tmp_path / "absent.lock") == LockFile()
    with pytest.raises(NotFoundError, match="no lock file") as absent:
        load_lock(tmp_path / "absent.lock", missing_ok=False)
    assert "local-ai lock" in str(absent.value.hint)


def test_save_is_atomic_and_skips_identical_content(tmp_path: Path, fake_hub: FakeHub) -> None:
    add_mlx_repo(fake_hub)
    add_gguf_repo(fake_hub)
    (tmp_path / "dots").mkdir()
    path = tmp_path / "dots" / "local-ai.lock"
    lock = _lock_for(fake_hub)
    assert save_lock(path, lock) is True
    before = path.stat().st_mtime_ns
    assert save_lock(path, lock) is False
    assert path.stat().st_mtime_ns == before
    assert [p.name for p in path.parent.iterdir()] == ["local-ai.lock"]  # no temp files left


def test_lock_command_creates_keeps_and_upgrades(
    tmp_path: Path, fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]
) -> None:
    first = add_mlx_repo(fake_hub)
    add_gguf_repo(fake_hub)
    (tmp_path / "local-ai.toml").write_text(MANIFEST)
    lock_path = tmp_path / "local-ai.lock"

    def _cli(*args: str) -> tuple[int, dict[str, Any], str]:
        code, out, err = run_inprocess(
            capsys, "lock", "--json", "--config", str(tmp_path / "local-ai.toml"), *args
        )
        return code, (json.loads(out) if out.strip() else {}), err

    # A fresh process finds the hub through HF_ENDPOINT, read when the command runs.
    process = run_cli("lock", "--config", str(tmp_path / "local-ai.toml"))
    assert process.returncode == 0, process.stderr
    assert "coder" in process.stdout and "added" in process.stdout
    lock_path.unlink()

    code, out, err = _cli()
    assert code == 0, err
    assert {a: m["action"] for a, m in out["models"].items()} == {
        "coder": "added",
        "small.q4": "added",
    }
    assert load_lock(lock_path).models["coder"].commit == first

    # main moves on the hub: a plain `lock` keeps the pin and asks the hub nothing.
    second = fake_hub.commit(MLX_REPO, {"config.json": '{"model_type": "qwen3", "v": 2}'})
    fake_hub.clear_requests()
    code, out, err = _cli()
    assert code == 0, err
    assert out["written"] is False and fake_hub.requests == []
    assert load_lock(lock_path).models["coder"].commit == first

    # Errors on the hub never silently keep the old pin as if it were the newest.
    fake_hub.inject("http_500", target="api")
    code, _, err = _cli("--upgrade")
    assert code == ExitCode.UNAVAILABLE and "attempts" in err
    assert load_lock(lock_path).models["coder"].commit == first
    fake_hub.clear_faults()

    code, out, err = _cli("--upgrade", "coder")
    assert code == 0, err
    coder = out["models"]["coder"]
    assert (coder["action"], coder["previous_commit"], coder["commit"]) == (
        "upgraded",
        first,
        second,
    )
    assert "small.q4" not in out["models"]
    assert load_lock(lock_path).models["coder"].commit == second

    # Editing the manifest re-resolves just that model and says why.
    (tmp_path / "local-ai.toml").write_text(MANIFEST.replace('"q4"', '"q8"'))
    code, out, err = _cli()
    assert code == 0, err
    small = out["models"]["small.q4"]
    assert small["action"] == "updated" and small["reasons"] == ["quantize changed (q4 → q8)"]

    code, _, err = _cli("--upgrade", "nope")
    assert code == ExitCode.ERROR and "'nope' not in local-ai.toml" in err
