"""apply's client conformance gate against the real daemon: each configured client's requests
and a tool-call round trip in its API shape are sent to a new build before it goes into service;
with benchmark.gate a failing build leaves the previous generation serving (checked on the live
server: /api/status and a completion) and stays rejected until measured again."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.projects import Project
from tests.server_helpers import TOOL_NAME, build_chat_model, build_tool_model

CLIENTS = "[clients.zed]\n[clients.claude_code]\n[clients.goose]\n[clients.codex]\n"
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture(autouse=True)
def linux_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CLAUDE_CONFIG_DIR", "GOOSE_PATH_ROOT", "XDG_CONFIG_HOME", "CODEX_HOME"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate-models")
    tool = build_tool_model(root / "tool")
    other = root / "tool-copy"  # the same weights at another path: another build
    shutil.copytree(tool, other)
    return {"tool": tool, "tool-copy": other, "chat": build_chat_model(root / "chat")}


def _models(**aliases: Path) -> str:
    return "".join(
        f'[models.{alias}]\npath = "{path}"\ncontext = 2048\n' for alias, path in aliases.items()
    )


def _calls_tool(project: Project, alias: str) -> bool:
    """A completion from the live server: the tool model always calls one, the chat model never."""
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{project.port}/v1", api_key="none", timeout=60)
    reply = client.chat.completions.create(
        model=alias,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=TOOLS,
        max_tokens=32,
        temperature=0,
    )
    return bool(reply.choices[0].message.tool_calls)


@pytest.mark.timeout(600)
def test_gate_keeps_a_build_that_fails_a_client_out_of_service(
    project: Project, models: dict[str, Path]
) -> None:
    gate = "gate = true\n"
    project.write(_models(coder=models["tool"]) + CLIENTS, bench=True, extra=gate)
    first = project.cli("apply", "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "✓ conform:coder" in first.stderr, first.stderr
    assert "Generation 1." in first.stdout
    before = project.live()
    assert _calls_tool(project, "coder")

    # A model that never calls a tool: the round trip fails, the server stays on generation 1.
    project.write(_models(coder=models["chat"]) + CLIENTS, bench=True, extra=gate)
    gated = project.cli("apply", "--yes")
    assert gated.returncode == 1, gated.stdout + gated.stderr
    assert "✗ conform:coder: coder fails Zed: tool call (coder): no tool call" in gated.stderr
    for other in ("Claude Code", "Goose", "Codex"):  # each client's failing request is named
        assert f"{other}: tool call (coder): no " in gated.stderr.replace("\n    ", " ")
    assert "stays on generation 1 (benchmark.gate): conform:coder: coder fails Zed" in (
        gated.stdout.replace("\n", " ")
    )
    assert project.live() == before
    assert _calls_tool(project, "coder")
    rejected = project.state()["models"]["coder"]["rejected"]  # type: ignore[index]
    assert rejected.startswith("Zed: tool call (coder)")
    plan = project.cli("plan").stdout
    assert "conform" in plan and "kept out of service by benchmark.gate (Zed: tool call" in plan

    # Not measured again (--skip-benchmark), the rejected build stays out of the reloaded map.
    skipped = project.cli("apply", "--yes", "--skip-benchmark")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert project.live() == before
    assert _calls_tool(project, "coder")

    # A build that passes switches the server to it.
    project.write(_models(coder=models["tool-copy"]) + CLIENTS, bench=True, extra=gate)
    passed = project.cli("apply", "--yes")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "✓ conform:coder" in passed.stderr
    after = project.live()
    assert after["coder"] != before["coder"]
    assert _calls_tool(project, "coder")
    assert project.state()["models"]["coder"]["rejected"] is None  # type: ignore[index]

    # Without the gate a failing client is a warning: the new model is served.
    project.write(_models(coder=models["tool-copy"], plain=models["chat"]) + CLIENTS, bench=True)
    warned = project.cli("apply", "--yes")
    assert warned.returncode == 0, warned.stdout + warned.stderr
    assert "✓ conform:plain warning: plain fails Zed: tool call (plain)" in warned.stderr
    assert set(project.live()) == {"coder", "plain"}
    assert not _calls_tool(project, "plain")
