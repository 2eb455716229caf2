"""`local-ai clients diff | write | env | check`, run as users run them (a subprocess)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.clirunner import run_cli

DATA = Path(__file__).parent / "data" / "clients"
MANIFEST = """\
version = 1

[server]
port = {port}

[models.coder]
repo = "org/coder"
name = "Coder"
context = 16384

[clients.zed]

[clients.claude_code]

[clients.goose]
"""


@pytest.fixture(autouse=True)
def linux_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CLAUDE_CONFIG_DIR", "GOOSE_PATH_ROOT", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)


def write_manifest(port: int = 8080, text: str = MANIFEST) -> Path:
    path = Path.cwd() / "local-ai.toml"
    path.write_text(text.format(port=port))
    return path


def zed_settings() -> Path:
    return Path.home() / ".config" / "zed" / "settings.json"


def test_diff_write_and_converge() -> None:
    write_manifest()
    diff = run_cli("clients", "diff", "--detailed-exitcode")
    assert diff.returncode == 2, diff.stderr
    lines = diff.stdout.splitlines()
    assert lines[0] == "+ Zed: configure Zed for local-ai"
    assert '    + agent.default_model.model: "coder"' in lines
    assert "+ Claude Code: configure Claude Code for local-ai" in lines
    assert '    + env.ANTHROPIC_BASE_URL: "http://127.0.0.1:8080/anthropic"' in lines
    assert "+ Goose: configure Goose for local-ai" in lines
    assert not zed_settings().exists()

    refused = run_cli("clients", "write")  # not a terminal, no --yes
    assert refused.returncode == 1
    assert "writing client settings needs confirmation" in refused.stderr
    assert "pass --yes" in refused.stderr
    assert not zed_settings().exists()

    wrote = run_cli("clients", "write", "--yes", "--json")
    assert wrote.returncode == 0, wrote.stderr
    report = json.loads(wrote.stdout)
    assert report["written"] == ["claude-code", "goose", "zed"]
    assert report["backups"] == {"claude-code": [], "goose": [], "zed": []}
    zed = json.loads(zed_settings().read_text())
    assert zed["language_models"]["openai_compatible"]["local-ai"]["available_models"][0] == {
        "name": "coder",
        "display_name": "Coder",
        "max_tokens": 16384,
        "max_output_tokens": 8192,
        "capabilities": {
            "tools": True,
            "images": False,
            "parallel_tool_calls": False,
            "prompt_cache_key": False,
        },
    }

    again = run_cli("clients", "diff", "--detailed-exitcode", "--json")
    assert again.returncode == 0, again.stdout
    assert [
        (c["client"], c["change"], c["cause"]) for c in json.loads(again.stdout)["clients"]
    ] == [
        ("zed", "=", "matches the manifest"),
        ("claude-code", "=", "matches the manifest"),
        ("goose", "=", "matches the manifest"),
    ]
    rewrite = run_cli("clients", "write", "--yes")
    assert rewrite.returncode == 0
    assert "nothing to write: every client matches the manifest" in rewrite.stdout


def test_port_change_and_removal_through_the_manifest() -> None:
    zed_settings().parent.mkdir(parents=True)
    shutil.copyfile(DATA / "zed_providers.jsonc", zed_settings())
    original = zed_settings().read_text()
    write_manifest()
    assert run_cli("clients", "write", "--yes", "zed").returncode == 0
    assert not (Path.home() / ".claude").exists()  # only the client asked for
    backups = sorted(zed_settings().parent.glob("settings.json.local-ai-backup-*"))
    assert [b.read_text() for b in backups] == [original]

    write_manifest(port=9123)
    diff = run_cli("clients", "diff", "zed", "-u")
    assert diff.returncode == 0
    assert "~ Zed: 1 difference from the manifest" in diff.stdout
    assert '-        "api_url": "http://127.0.0.1:8080/v1",' in diff.stdout
    assert '+        "api_url": "http://127.0.0.1:9123/v1",' in diff.stdout

    write_manifest(text=MANIFEST.split("[clients.zed]")[0])
    diff = run_cli("clients", "diff")
    assert diff.stdout.splitlines()[0] == (
        "- Zed: removed from the manifest: restore what local-ai changed in Zed's settings"
    )
    assert run_cli("clients", "write", "--yes").returncode == 0
    assert zed_settings().read_text() == original


def test_unparseable_settings_are_left_alone_and_named() -> None:
    write_manifest()
    zed_settings().parent.mkdir(parents=True)
    broken = '{\n  "theme": "One Dark",,\n}\n'
    zed_settings().write_text(broken)
    result = run_cli("clients", "write", "--yes")
    assert result.returncode == 78, result.stderr
    assert f"{zed_settings()}:2:23: expected a quoted key" in result.stdout
    assert "zed was not written" in result.stderr
    assert "the file was left as it is" in result.stderr
    assert zed_settings().read_text() == broken
    assert not list(zed_settings().parent.glob("*backup*"))
    # The others were written.
    assert (Path.home() / ".claude" / "settings.json").exists()
    assert run_cli("clients", "diff").returncode == 78


def test_env_prints_shell_exports() -> None:
    write_manifest(
        text=MANIFEST.replace("port = {port}", 'port = 8081\napi_key_env = "MY_KEY"').replace(
            "[clients.claude_code]", '[clients.claude_code]\nhaiku = "coder"'
        )
    )
    result = run_cli("clients", "env", "claude-code")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "export ANTHROPIC_BASE_URL=http://127.0.0.1:8081/anthropic",
        'export ANTHROPIC_AUTH_TOKEN="${MY_KEY}"',
        "export ANTHROPIC_MODEL=coder",
        "export ANTHROPIC_DEFAULT_OPUS_MODEL=coder",
        "export ANTHROPIC_DEFAULT_SONNET_MODEL=coder",
        "export ANTHROPIC_DEFAULT_HAIKU_MODEL=coder",
        "export CLAUDE_CODE_ATTRIBUTION_HEADER=0",
        "export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1",
    ]
    other = run_cli("clients", "env", "zed")
    assert other.returncode == 64
    assert "no environment form for 'zed'" in other.stderr


def test_unknown_client_is_a_usage_error() -> None:
    write_manifest()
    result = run_cli("clients", "diff", "vscode")
    assert result.returncode == 64
    assert "unknown client 'vscode'" in result.stderr
    assert "choose from zed, claude-code, goose" in result.stderr


def test_check_fails_clearly_when_not_configured_or_server_down() -> None:
    from tests.server_helpers import free_port

    write_manifest(port=free_port())
    result = run_cli("clients", "check", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert not report["ok"]
    assert [(c["client"], c["problem"]) for c in report["clients"]] == [
        ("zed", f"not configured: {zed_settings()} does not exist"),
        (
            "claude-code",
            f"not configured: {Path.home() / '.claude' / 'settings.json'} does not exist",
        ),
        (
            "goose",
            "not configured: "
            f"{Path.home() / '.config/goose/custom_providers/custom_local_ai.json'} does not exist",
        ),
    ]
    assert run_cli("clients", "write", "--yes").returncode == 0
    down = run_cli("clients", "check")
    assert down.returncode == 1
    out = down.stdout
    assert out.count("✗ fail") == 3 and "✓ pass" not in out
    assert "✗ HEAD /: cannot connect to http://127.0.0.1:" in out
    assert "✗ models listed: cannot connect to http://127.0.0.1:" in out
    assert out.count("hint: start it with `local-ai server start`") == 3
