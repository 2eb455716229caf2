"""The reconciler's view of clients: observe (reads only) → plan (pure) → apply one change
(atomic write, backup, ledger). Realistic existing files, exact merges, idempotence, drift,
removal that restores only what local-ai changed, and refusal to edit unparseable files."""

from __future__ import annotations

import difflib
import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from local_ai.clients import jsonc, tomlkeys, yamlkeys
from local_ai.clients.base import ClientChange
from local_ai.clients.files import backups_of, ledger_path
from local_ai.clients.plan import (
    apply_client_change,
    default_locations,
    describe_result,
    observe_clients,
    plan_clients,
    unified_diff,
)
from local_ai.errors import ClientFileChangedError, LocalAIError
from local_ai.manifest.models import Manifest
from local_ai.util.change import Change

DATA = Path(__file__).parent / "data" / "clients"
URL = "http://127.0.0.1:8080"
MODELS = {
    "coder": {"repo": "org/coder", "context": 65536, "max_output_tokens": 16384, "name": "Coder"},
    "fast": {"repo": "org/fast", "context": 8192},
}


@pytest.fixture(autouse=True)
def no_client_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CLAUDE_CONFIG_DIR", "GOOSE_PATH_ROOT", "XDG_CONFIG_HOME", "CODEX_HOME"):
        monkeypatch.delenv(var, raising=False)


def manifest(clients: dict[str, Any] | None = None, **server: Any) -> Manifest:
    return Manifest.model_validate(
        {
            "server": {"default_model": "coder", **server},
            "models": MODELS,
            "clients": clients if clients is not None else {},
        }
    )


ALL = {"zed": {}, "claude_code": {"haiku": "fast"}, "goose": {}}


def locations() -> dict[str, Path]:
    loc = default_locations()
    goose = loc["goose.dir"]
    return {
        "zed": loc["zed.settings"],
        "claude": loc["claude-code.settings"],
        "goose_config": goose / "config.yaml",
        "goose_provider": goose / "custom_providers" / "custom_local_ai.json",
    }


def place(fixture: str, where: Path) -> str:
    where.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA / fixture, where)
    return where.read_text()


def plan(m: Manifest) -> dict[str, ClientChange]:
    return {c.client: c for c in plan_clients(m, URL, observe_clients(m))}


def apply_all(m: Manifest) -> dict[str, ClientChange]:
    changes = plan(m)
    for change in changes.values():
        apply_client_change(change, now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    return changes


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------- Zed


def test_zed_merge_into_settings_with_comments_and_other_providers() -> None:
    where = locations()["zed"]
    before = place("zed_providers.jsonc", where)
    change = apply_all(manifest({"zed": {}}))["zed"]
    assert (change.change, change.cause) == (Change.CREATE, "configure Zed for local-ai")
    after = where.read_text()
    # Only the two agent model values change; every other line of the user's file stays.
    diff = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    assert [line for line in diff if line.startswith("- ")] == [
        '-       "provider": "ollama",',
        '-       "model": "qwen2.5-coder:7b",',
    ]
    assert [line for line in diff if line.startswith("+ ")][:2] == [
        '+       "provider": "local-ai",',
        '+       "model": "coder",',
    ]
    assert "// Work gateway; key in MY_GATEWAY_API_KEY" in after
    assert '"file_scan_exclusions": ["**/.git", "**/node_modules", "**/*.pyc",],' in after
    data = jsonc.loads(after)
    old = jsonc.loads(before)
    assert (
        data["language_models"]["openai_compatible"]["my-gateway"]
        == (old["language_models"]["openai_compatible"]["my-gateway"])
    )
    assert data["language_models"]["ollama"] == old["language_models"]["ollama"]
    assert data["agent"] == {
        "default_model": {"provider": "local-ai", "model": "coder"},
        "always_allow_tool_actions": False,
    }
    assert data["language_models"]["openai_compatible"]["local-ai"] == {
        "api_url": "http://127.0.0.1:8080/v1",
        "available_models": [
            {
                "name": "coder",
                "display_name": "Coder",
                "max_tokens": 65536,
                "max_output_tokens": 16384,
                "capabilities": {
                    "tools": True,
                    "images": False,
                    "parallel_tool_calls": False,
                    "prompt_cache_key": False,
                },
            },
            {
                "name": "fast",
                "display_name": "fast",
                "max_tokens": 8192,
                "max_output_tokens": 8192,
                "capabilities": {
                    "tools": True,
                    "images": False,
                    "parallel_tool_calls": False,
                    "prompt_cache_key": False,
                },
            },
        ],
    }
    # The key is never written; the note names the variable Zed reads.
    assert "LOCAL_AI_API_KEY" in change.notes[0]
    assert "api_key" not in json.dumps(data["language_models"]["openai_compatible"]["local-ai"])


def test_zed_edit_is_exact_text_on_a_fresh_settings_file() -> None:
    where = locations()["zed"]
    before = place("zed_fresh.jsonc", where)
    apply_all(manifest({"zed": {"models": ["fast"], "provider_name": "Local AI"}}))
    added = (
        ',\n  "language_models": {\n    "openai_compatible": {\n      "Local AI": {\n'
        '        "api_url": "http://127.0.0.1:8080/v1",\n        "available_models": [\n'
        '          {\n            "name": "fast",\n            "display_name": "fast",\n'
        '            "max_tokens": 8192,\n            "max_output_tokens": 8192,\n'
        '            "capabilities": {\n              "tools": true,\n'
        '              "images": false,\n              "parallel_tool_calls": false,\n'
        '              "prompt_cache_key": false\n            }\n          }\n        ]\n'
        '      }\n    }\n  },\n  "agent": {\n    "default_model": {\n'
        '      "provider": "Local AI",\n      "model": "fast"\n    }\n  }'
    )
    assert where.read_text() == before.replace(
        '"dark": "One Dark"\n  }', '"dark": "One Dark"\n  }' + added
    )


@pytest.mark.parametrize(
    "fixture",
    [
        "zed_providers.jsonc",
        "zed_fresh.jsonc",
        "zed_no_trailing_commas.jsonc",
        "zed_comments_only.jsonc",
        "zed_own_provider.jsonc",
    ],
)
def test_zed_second_write_is_a_no_op_and_removal_restores_the_exact_file(fixture: str) -> None:
    where = locations()["zed"]
    before = place(fixture, where)
    first = apply_all(manifest({"zed": {}}))["zed"]
    assert first.has_changes
    written = where.read_text()
    again = plan(manifest({"zed": {}}))["zed"]
    assert (again.change, again.cause, again.has_changes) == (
        Change.NOOP,
        "matches the manifest",
        False,
    )
    assert apply_client_change(again) == []
    assert where.read_text() == written
    removed = apply_all(manifest())["zed"]
    assert removed.change == Change.DELETE
    assert (
        removed.cause
        == "removed from the manifest: restore what local-ai changed in Zed's settings"
    )
    assert where.read_text() == before
    assert not ledger_path("zed").exists()
    assert plan(manifest()) == {}


def test_zed_own_provider_is_replaced_then_given_back_byte_for_byte() -> None:
    where = locations()["zed"]
    before = place("zed_own_provider.jsonc", where)
    change = plan(manifest({"zed": {"models": ["coder"]}}))["zed"]
    assert change.change == Change.CREATE
    assert (
        '~ language_models.openai_compatible.local-ai.api_url: "http://127.0.0.1:9999/v1" → "http://127.0.0.1:8080/v1"'
        in change.drift
    )
    assert (
        '~ language_models.openai_compatible.local-ai.available_models[0].name: "old" → "coder"'
        in change.drift
    )
    apply_client_change(change)
    assert "// Set up by hand before local-ai managed it." in where.read_text()
    apply_all(manifest({"zed": {"enabled": False}}))
    assert where.read_text() == before


# ------------------------------------------------------------------------- Claude Code


def test_claude_code_env_block_merged_and_previous_values_restored() -> None:
    where = locations()["claude"]
    before = place("claude_settings.json", where)
    m = manifest({"claude_code": {"haiku": "fast", "subagent": "fast"}})
    change = apply_all(m)["claude-code"]
    digest = hashlib.sha256(b'"local-ai"').hexdigest()[:6]
    assert change.drift == (
        f'+ env.ANTHROPIC_AUTH_TOKEN: "<secret {digest}>"',
        '+ env.ANTHROPIC_BASE_URL: "http://127.0.0.1:8080/anthropic"',
        '+ env.ANTHROPIC_DEFAULT_HAIKU_MODEL: "fast"',
        '+ env.ANTHROPIC_DEFAULT_OPUS_MODEL: "coder"',
        '+ env.ANTHROPIC_DEFAULT_SONNET_MODEL: "coder"',
        '~ env.ANTHROPIC_MODEL: "claude-sonnet-4-5" → "coder"',
        '+ env.CLAUDE_CODE_ATTRIBUTION_HEADER: "0"',
        '+ env.CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: "1"',
        '+ env.CLAUDE_CODE_SUBAGENT_MODEL: "fast"',
    )
    data = json.loads(where.read_text())  # still strict JSON: Claude Code reads it so
    old = json.loads(before)
    assert {k: v for k, v in data.items() if k != "env"} == {
        k: v for k, v in old.items() if k != "env"
    }
    assert data["env"] == {
        "BASH_DEFAULT_TIMEOUT_MS": "120000",
        "ANTHROPIC_MODEL": "coder",
        "DISABLE_TELEMETRY": "1",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8080/anthropic",
        "ANTHROPIC_AUTH_TOKEN": "local-ai",
        "ANTHROPIC_DEFAULT_OPUS_MODEL": "coder",
        "ANTHROPIC_DEFAULT_SONNET_MODEL": "coder",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": "fast",
        "CLAUDE_CODE_SUBAGENT_MODEL": "fast",
        "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    assert list(data) == list(old)  # key order kept
    apply_all(manifest())
    assert where.read_text() == before  # ANTHROPIC_MODEL back to the user's value, exactly


def test_claude_code_secret_key_is_masked_and_api_key_env_left_to_the_shell() -> None:
    where = locations()["claude"]
    place("claude_settings_no_env.json", where)
    secret = "s3cret-key-0123456789"
    change = plan(manifest({"claude_code": {}}, api_key=secret))["claude-code"]
    shown = "\n".join(change.drift) + json.dumps(change.to_json()) + unified_diff(change)
    assert secret not in shown
    assert "<secret>" in unified_diff(change)
    apply_client_change(change)
    assert json.loads(where.read_text())["env"]["ANTHROPIC_AUTH_TOKEN"] == secret
    assert ledger_path("claude-code").stat().st_mode & 0o777 == 0o600

    by_env = plan(manifest({"claude_code": {}}, api_key_env="MY_KEY"))["claude-code"]
    assert "- env.ANTHROPIC_AUTH_TOKEN (remove)" in by_env.drift
    assert by_env.notes[0].startswith("Claude Code settings cannot read $MY_KEY")
    apply_client_change(by_env)
    assert "ANTHROPIC_AUTH_TOKEN" not in json.loads(where.read_text())["env"]


def test_user_edits_to_owned_values_show_as_drift_and_survive_removal() -> None:
    where = locations()["claude"]
    m = manifest({"claude_code": {}})
    apply_all(m)
    data = json.loads(where.read_text())
    data["env"]["ANTHROPIC_MODEL"] = "my-own-choice"
    data["env"]["MY_VAR"] = "1"
    where.write_text(json.dumps(data, indent=2))
    change = plan(m)["claude-code"]
    assert (change.change, change.cause) == (Change.UPDATE, "1 difference from the manifest")
    assert change.drift == ('~ env.ANTHROPIC_MODEL: "my-own-choice" → "coder"',)
    # Removal without re-applying: the user's value is theirs, everything local-ai wrote goes.
    apply_all(manifest())
    assert json.loads(where.read_text()) == {
        "env": {"ANTHROPIC_MODEL": "my-own-choice", "MY_VAR": "1"}
    }


def test_claude_code_created_file_is_removed_with_the_client() -> None:
    where = locations()["claude"]
    assert not where.exists()
    apply_all(manifest({"claude_code": {}}))
    assert where.exists() and not backups_of(where)
    apply_all(manifest({"claude_code": {"enabled": False}}))
    assert not where.exists() and not backups_of(where)


# ------------------------------------------------------------------------------- Goose


def test_goose_provider_file_and_config_keys() -> None:
    loc = locations()
    before = place("goose_config.yaml", loc["goose_config"])
    change = apply_all(manifest({"goose": {"models": ["fast", "coder"]}}))["goose"]
    assert change.drift == (
        '+ custom_local_ai.json: {"name": "custom_local_ai", "engine": "openai", '
        '"display_name": "local-ai", "de…',
        '~ config.yaml: GOOSE_MODEL: "claude-sonnet-4-5" → "coder"',
        '~ config.yaml: GOOSE_PROVIDER: "anthropic" → "custom_local_ai"',
    )
    assert json.loads(loc["goose_provider"].read_text()) == {
        "name": "custom_local_ai",
        "engine": "openai",
        "display_name": "local-ai",
        "description": "Models served by local-ai on this machine",
        "api_key_env": "LOCAL_AI_API_KEY",
        "base_url": "http://127.0.0.1:8080/v1/chat/completions",
        "models": [
            {"name": "fast", "context_limit": 8192},
            {"name": "coder", "context_limit": 65536},
        ],
        "supports_streaming": True,
        "requires_auth": False,
    }
    config = loc["goose_config"].read_text()
    assert config == before.replace(
        "GOOSE_PROVIDER: anthropic", 'GOOSE_PROVIDER: "custom_local_ai"'
    ).replace("GOOSE_MODEL: claude-sonnet-4-5  #", 'GOOSE_MODEL: "coder"  #')
    assert not plan(manifest({"goose": {"models": ["fast", "coder"]}}))["goose"].has_changes
    apply_all(manifest())
    assert loc["goose_config"].read_text() == before
    assert not loc["goose_provider"].exists()


def test_goose_with_a_server_key_requires_auth() -> None:
    change = plan(manifest({"goose": {}}, api_key_env="LOCAL_AI_SERVER_KEY"))["goose"]
    apply_client_change(change)
    doc = json.loads(locations()["goose_provider"].read_text())
    assert (doc["api_key_env"], doc["requires_auth"]) == ("LOCAL_AI_SERVER_KEY", True)
    assert change.notes == (
        "Goose reads the API key from LOCAL_AI_SERVER_KEY: "
        "set it to the value of $LOCAL_AI_SERVER_KEY.",
    )


def test_goose_minimal_config_gets_keys_appended_and_removed() -> None:
    loc = locations()
    before = place("goose_config_minimal.yaml", loc["goose_config"])
    apply_all(manifest({"goose": {}}))
    assert (
        loc["goose_config"].read_text()
        == before + 'GOOSE_PROVIDER: "custom_local_ai"\nGOOSE_MODEL: "coder"\n'
    )
    assert yamlkeys.get(loc["goose_config"].read_text(), "GOOSE_MODEL") == (True, "coder")
    apply_all(manifest())
    assert loc["goose_config"].read_text() == before


# ---------------------------------------------------------------- drift, models, errors


def test_model_changes_are_drift_with_exact_paths() -> None:
    apply_all(manifest(ALL))
    changed = dict(MODELS)
    changed["coder"] = {**MODELS["coder"], "context": 32768}
    changed["new"] = {"repo": "org/new"}
    m = Manifest.model_validate(
        {"server": {"default_model": "coder", "port": 9000}, "models": changed, "clients": ALL}
    )
    zed = plan_clients(m, "http://127.0.0.1:9000", observe_clients(m))[0]
    assert zed.drift == (
        '~ language_models.openai_compatible.local-ai.api_url: "http://127.0.0.1:8080/v1" → '
        '"http://127.0.0.1:9000/v1"',
        "~ language_models.openai_compatible.local-ai.available_models[0].max_tokens: "
        "65536 → 32768",
        "+ language_models.openai_compatible.local-ai.available_models[2]: "
        '{"name": "new", "display_name": "new", "max_tokens": 32768, "max_output_tokens"…',
    )
    assert zed.cause == "3 differences from the manifest"


def test_unparseable_file_is_refused_and_left_untouched(isolated_home: Path) -> None:
    loc = locations()
    broken = '{\n  "theme": "One Dark",\n  "vim_mode": true\n  "oops": 1\n}\n'
    loc["zed"].parent.mkdir(parents=True)
    loc["zed"].write_text(broken)
    changes = plan(manifest(ALL))
    zed = changes["zed"]
    assert zed.error == (
        f"{loc['zed']}:4:3: expected ',' or '}}' "
        "(fix the file, or point local-ai elsewhere in [clients])"
    )
    assert (zed.change, zed.has_changes, zed.cause) == (
        Change.NOOP,
        False,
        "cannot edit Zed's settings",
    )
    with pytest.raises(LocalAIError, match="expected ','"):
        apply_client_change(zed)
    assert loc["zed"].read_text() == broken and not backups_of(loc["zed"])
    # The other clients are unaffected.
    assert changes["claude-code"].has_changes and changes["goose"].has_changes


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xff\xfe{}", "is not UTF-8 text (byte 0)"),
        (b'{"env": []}', "env is not an object, so env.ANTHROPIC_BASE_URL cannot be set"),
        (b"[1]", "the top level is not an object"),
    ],
)
def test_claude_settings_that_cannot_take_the_edit(content: bytes, problem: str) -> None:
    where = locations()["claude"]
    where.parent.mkdir(parents=True)
    where.write_bytes(content)
    change = plan(manifest({"claude_code": {}}))["claude-code"]
    assert change.error is not None and problem in change.error
    assert where.read_bytes() == content


def test_goose_yaml_that_cannot_take_the_edit() -> None:
    loc = locations()
    loc["goose_config"].parent.mkdir(parents=True)
    loc["goose_config"].write_text("GOOSE_MODEL:\n  nested: true\n")
    change = plan(manifest({"goose": {}}))["goose"]
    assert change.error == (
        f"{loc['goose_config']}: GOOSE_MODEL holds a nested block, not a single value "
        "(fix the file, or point local-ai elsewhere in [clients])"
    )


def test_file_changed_between_plan_and_apply_is_not_overwritten() -> None:
    where = locations()["zed"]
    place("zed_fresh.jsonc", where)
    change = plan(manifest({"zed": {}}))["zed"]
    where.write_text(where.read_text().replace("16", "18"))
    with pytest.raises(ClientFileChangedError, match="changed after local-ai planned its edit"):
        apply_client_change(change)
    assert '"ui_font_size": 18' in where.read_text()
    assert not ledger_path("zed").exists()


def test_disabled_client_without_history_is_a_noop_with_a_reason() -> None:
    changes = plan(manifest({"zed": {"enabled": False}}))
    assert (changes["zed"].change, changes["zed"].cause) == (
        Change.NOOP,
        "disabled in the manifest",
    )
    assert changes["zed"].edits == ()


def test_observe_reads_only_and_fingerprint_tracks_content(
    isolated_home: Path, tmp_path: Path
) -> None:
    where = locations()["zed"]
    place("zed_fresh.jsonc", where)
    home = tmp_path / "user-home"
    before = snapshot(home), snapshot(isolated_home)
    m = manifest(ALL)
    first = observe_clients(m)
    plan_clients(m, URL, first)
    assert (snapshot(home), snapshot(isolated_home)) == before
    assert observe_clients(m).fingerprint() == first.fingerprint()
    where.write_text(where.read_text() + "\n")
    assert observe_clients(m).fingerprint() != first.fingerprint()


def test_relative_paths_in_the_manifest_are_relative_to_its_directory(tmp_path: Path) -> None:
    m = manifest({"zed": {"settings_path": "editor/zed.json"}, "goose": {"config_dir": "~/g"}})
    observed = observe_clients(m, base_dir=tmp_path / "dots")
    assert observed.targets["zed"] == {"settings": tmp_path / "dots" / "editor" / "zed.json"}
    assert observed.targets["goose"]["config"] == Path.home() / "g" / "config.yaml"
    for change in plan_clients(m, URL, observed):
        apply_client_change(change)
    assert jsonc.lookup((tmp_path / "dots/editor/zed.json").read_text(), ("agent",))[0]


def saved(change: ClientChange) -> ClientChange:
    """The change as `apply PLAN` reads it back from a plan file."""
    return ClientChange.from_saved(json.loads(json.dumps(change.to_saved())))


def test_a_saved_change_makes_exactly_the_planned_edits() -> None:
    where = locations()["claude"]
    before = place("claude_settings.json", where)
    m = manifest({"claude_code": {"haiku": "fast"}, "goose": {}}, api_key="sk-local-123")
    first = plan(m)["claude-code"]
    assert saved(first) == first  # file texts, ledger (replaced values included) and secrets
    message = describe_result(
        first, apply_client_change(saved(first), now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    )
    backup = where.with_name("settings.json.local-ai-backup-20260102T030405")
    assert message == f"Claude Code: update {where} (backup: {backup})"
    assert backup.read_text() == before
    (edit,) = first.edits
    assert where.read_text() == edit.after
    assert not locations()["goose_config"].exists()  # only the client named
    assert plan(m)["claude-code"].to_json() == {
        "client": "claude-code",
        "resource": "client.claude-code",
        "change": "=",
        "cause": "matches the manifest",
        "drift": [],
        "files": [{"path": str(where), "action": "unchanged", "backup": False}],
        "notes": list(first.notes),
        "error": None,
    }
    # Removal from a saved change gives the user's values back, byte for byte.
    removal = saved(plan(manifest())["claude-code"])
    assert removal.ledger is None and removal.change is Change.DELETE
    apply_client_change(removal)
    assert where.read_text() == before
    # A saved change whose file moved on since is refused, the file left alone.
    stale = saved(plan(m)["claude-code"])
    where.write_text(before + "\n")
    with pytest.raises(ClientFileChangedError):
        apply_client_change(stale)
    assert where.read_text() == before + "\n"


def test_moving_a_client_file_restores_the_old_one_and_writes_the_new(tmp_path: Path) -> None:
    old = locations()["zed"]
    before = place("zed_fresh.jsonc", old)
    apply_all(manifest({"zed": {}}))
    moved = manifest({"zed": {"settings_path": str(tmp_path / "new.json")}})
    change = plan(moved)["zed"]
    assert change.change == Change.UPDATE
    assert [(e.path, e.action) for e in change.edits] == [
        (tmp_path / "new.json", "create"),
        (old, "update"),
    ]
    apply_client_change(change)
    assert old.read_text() == before
    assert jsonc.lookup((tmp_path / "new.json").read_text(), ("agent", "default_model"))[0]
    assert not plan(moved)["zed"].has_changes


# ------------------------------------------------------------------------------- Codex


def codex_files() -> tuple[Path, Path]:
    root = default_locations()["codex.dir"]
    return root / "config.toml", root


@pytest.mark.parametrize(
    "fixture", ["codex_config.toml", "codex_config_minimal.toml", "codex_own_provider.toml", None]
)
def test_codex_provider_default_model_and_profiles_then_exact_removal(fixture: str | None) -> None:
    config, root = codex_files()
    before = place(fixture, config) if fixture else None
    change = apply_all(manifest({"codex": {}}))["codex"]
    assert change.change == Change.CREATE
    doc = tomlkeys.parse(config.read_text())
    assert doc["model_providers"]["local-ai"] == {
        "name": "local-ai",
        "base_url": "http://127.0.0.1:8080/v1",
        "wire_api": "responses",
    }
    assert (doc["model_provider"], doc["model"], doc["model_context_window"]) == (
        "local-ai",
        "coder",
        65536,
    )
    for alias, context in (("coder", 65536), ("fast", 8192)):
        assert tomlkeys.parse((root / f"{alias}.config.toml").read_text()) == {
            "model_provider": "local-ai",
            "model": alias,
            "model_context_window": context,
        }
    again = plan(manifest({"codex": {}}))["codex"]
    assert (again.change, again.has_changes) == (Change.NOOP, False)
    removed = apply_all(manifest())["codex"]
    assert removed.change == Change.DELETE
    if before is None:
        assert not config.exists()
    else:
        assert config.read_text() == before
    assert sorted(p.name for p in root.iterdir() if "local-ai-backup" not in p.name) == (
        ["config.toml"] if before is not None else []
    )
    assert not ledger_path("codex").exists()


def test_codex_edit_is_exact_text_in_a_config_with_comments_and_other_providers() -> None:
    config, _ = codex_files()
    before = place("codex_config.toml", config)
    apply_all(manifest({"codex": {"models": ["coder"]}}))
    expected = before.replace(
        'model = "gpt-5.2-codex"  # the hosted default\n',
        'model = "coder"  # the hosted default\n',
    ).replace(
        'sandbox_mode = "workspace-write"\n',
        'sandbox_mode = "workspace-write"\nmodel_provider = "local-ai"\n'
        "model_context_window = 65536\n",
    ) + (
        "\n[model_providers.local-ai]\n"
        'name = "local-ai"\n'
        'base_url = "http://127.0.0.1:8080/v1"\n'
        'wire_api = "responses"\n'
    )
    assert config.read_text() == expected


def test_codex_own_provider_and_model_are_given_back_byte_for_byte() -> None:
    config, _ = codex_files()
    before = place("codex_own_provider.toml", config)
    change = plan(manifest({"codex": {"models": ["fast"]}}, api_key_env="SERVER_KEY"))["codex"]
    assert '~ config.toml: model: "old" → "fast"' in change.drift
    assert (
        '~ config.toml: model_providers.local-ai.base_url: "http://127.0.0.1:9999/v1" → '
        '"http://127.0.0.1:8080/v1"' in change.drift
    )
    assert '+ config.toml: model_providers.local-ai.env_key: "SERVER_KEY"' in change.drift
    assert change.notes == (
        "Codex reads the API key from SERVER_KEY: set it to the value of $SERVER_KEY.",
    )
    apply_client_change(change)
    text = config.read_text()
    assert "# Set up by hand before local-ai managed it." in text
    assert '[history]\npersistence = "none"\n' in text
    apply_all(manifest({"codex": {"enabled": False}}))
    assert config.read_text() == before


def test_codex_home_and_profile_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "codex-home"))
    m = Manifest.model_validate(
        {"models": {"qwen2.5-coder": {"repo": "org/q", "context": 4096}}, "clients": {"codex": {}}}
    )
    apply_all(m)
    profile = tmp_path / "codex-home" / "qwen2-5-coder.config.toml"
    assert tomlkeys.parse(profile.read_text())["model"] == "qwen2.5-coder"


def test_codex_profile_of_a_dropped_alias_is_removed() -> None:
    _, root = codex_files()
    apply_all(manifest({"codex": {"models": ["coder", "fast"]}}))
    assert (root / "fast.config.toml").exists()
    change = apply_all(manifest({"codex": {"models": ["coder"]}}))["codex"]
    assert change.change == Change.UPDATE
    assert "- fast.config.toml (remove)" in change.drift
    assert not (root / "fast.config.toml").exists()
    assert (root / "coder.config.toml").exists()
