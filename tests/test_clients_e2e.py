"""End to end: a real `local-ai server` daemon with a tiny model, client settings written by
`local-ai clients write`, and `local-ai clients check` sending each client's first requests
to the base URLs and model names those settings hold."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from local_ai.clients import jsonc, tomlkeys
from tests.server_helpers import Daemon, build_chat_model, free_port

KEY = "e2e-key-0123456789"

MANIFEST = """\
version = 1

[server]
port = {port}
api_key_env = "LOCAL_AI_E2E_KEY"
default_model = "{default}"
preload = ["tiny"]

[models.tiny]
path = "{model}"
context = 2048
name = "Tiny"
{extra}
[clients.zed]

[clients.claude_code]

[clients.goose]

[clients.codex]
"""


@pytest.fixture(autouse=True)
def linux_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CLAUDE_CONFIG_DIR", "GOOSE_PATH_ROOT", "XDG_CONFIG_HOME", "CODEX_HOME"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.timeout(120)
def test_written_settings_answer_and_a_missing_model_is_reported(tmp_path: Path) -> None:
    model = build_chat_model(tmp_path / "tiny")
    port = free_port()
    manifest = tmp_path / "local-ai.toml"

    def declare(default: str, extra: str = "") -> None:
        text = MANIFEST.format(port=port, model=model, default=default, extra=extra)
        manifest.write_text(text)

    declare("tiny")
    daemon = Daemon(
        home=tmp_path / "state", manifest=manifest, port=port, extra_env={"LOCAL_AI_E2E_KEY": KEY}
    )
    started = daemon.start()
    assert started.returncode == 0, started.stderr + daemon.log()
    port = daemon.port  # another one if the first was taken meanwhile (declare follows)
    try:
        wrote = daemon.cli("clients", "write", "--yes")
        assert wrote.returncode == 0, wrote.stderr

        # The URL and model names Zed and Goose were given answer with the server's key.
        zed = jsonc.loads((Path.home() / ".config/zed/settings.json").read_text())
        provider = zed["language_models"]["openai_compatible"]["local-ai"]
        listed = httpx.get(
            provider["api_url"] + "/models",
            headers={"authorization": f"Bearer {KEY}"},
            trust_env=False,
        )
        assert listed.status_code == 200, listed.text
        served = [m["id"] for m in listed.json()["data"]]
        assert [m["name"] for m in provider["available_models"]] == served == ["tiny"]
        goose = json.loads(
            (Path.home() / ".config/goose/custom_providers/custom_local_ai.json").read_text()
        )
        assert goose["base_url"] == provider["api_url"] + "/chat/completions"
        assert goose["requires_auth"] is True and goose["api_key_env"] == "LOCAL_AI_E2E_KEY"
        claude = json.loads((Path.home() / ".claude/settings.json").read_text())["env"]
        assert claude["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}/anthropic"
        assert "ANTHROPIC_AUTH_TOKEN" not in claude  # the key stays in the shell
        codex = tomlkeys.parse((Path.home() / ".codex/config.toml").read_text())
        assert codex["model_providers"]["local-ai"]["base_url"] == provider["api_url"]
        assert codex["model_providers"]["local-ai"]["env_key"] == "LOCAL_AI_E2E_KEY"

        check = daemon.cli("clients", "check", "--json")
        report = json.loads(check.stdout)
        assert check.returncode == 0, check.stdout + check.stderr
        assert [(c["client"], c["ok"]) for c in report["clients"]] == [
            ("zed", True),
            ("claude-code", True),
            ("goose", True),
            ("codex", True),
        ]
        assert [p["name"] for c in report["clients"] for p in c["probes"]] == [
            "models listed",
            "tool-calling chat stream (tiny)",
            "HEAD /",
            "models listed",
            "messages stream with tools (tiny)",
            "models listed",
            "chat stream with tools (tiny)",
            "models listed",
            "responses stream with tools (tiny)",
        ]

        # A model the settings name but the running server does not serve.
        declare("ghost", extra=f'\n[models.ghost]\npath = "{tmp_path / "nowhere"}"\n')
        assert daemon.cli("clients", "write", "--yes").returncode == 0
        failing = daemon.cli("clients", "check", "zed", "goose")
        assert failing.returncode == 1
        out = failing.stdout
        assert out.count("✗ fail") == 2
        assert "✗ models listed: not served: ghost (served: tiny)" in out
        assert "✗ tool-calling chat stream (ghost): 404: " in out
        assert "✗ chat stream with tools (ghost): 404: " in out
        assert "ghost" in out.split("tool-calling chat stream (ghost): 404: ")[1].splitlines()[0]
    finally:
        daemon.cli("server", "stop", "--timeout", "5")
        daemon.kill()
