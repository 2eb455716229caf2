"""Pure parts of the server: request normalisation, error shapes, alias map, server config, pidfile
identity and the launchd plist (generated and parsed with plistlib, as on macOS)."""

from __future__ import annotations

import os
import plistlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from local_ai.errors import ConfigError, NotYetError, PortInUseError
from local_ai.manifest.models import Manifest
from local_ai.server import compat, launchd
from local_ai.server.aliases import AliasMap, load_alias_map, save_alias_map
from local_ai.server.config import config_hash, server_config
from local_ai.server.pidfile import is_same_process, process_start_time
from tests.clirunner import run_cli
from tests.server_helpers import free_port


def test_billing_header_line_is_stripped() -> None:
    text = "x-anthropic-billing-header: cc_version=1.2.3; cch=abc;\nYou are Claude Code."
    assert compat.strip_billing_header(text) == "You are Claude Code."
    assert compat.strip_billing_header("no header here") == "no header here"


def test_claude_code_body_is_normalised() -> None:
    body = {
        "model": "m",
        "thinking": {"type": "adaptive"},
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=1; cch=1;"},
            {"type": "text", "text": "Base prompt", "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [
            {"name": "Read", "input_schema": {"type": "object"}},
            {"type": "web_search_20250305", "name": "web_search"},
        ],
        "messages": [
            {"role": "system", "content": "Also this."},
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}],
            },
        ],
    }
    out = compat.normalize_anthropic(body)
    assert "thinking" not in out
    assert [b["text"] for b in out["system"]] == ["Base prompt", "Also this."]
    assert [t["name"] for t in out["tools"]] == ["Read"]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant"]
    assert out["messages"][1]["content"] == ""
    assert body["messages"][0]["role"] == "system"  # the input is not modified
    small = compat.normalize_anthropic({"thinking": {"type": "enabled", "budget_tokens": 10}})
    assert small["thinking"]["budget_tokens"] == 1024


def test_openai_body_is_normalised() -> None:
    out = compat.normalize_openai(
        {
            "messages": [
                {"role": "developer", "content": "rules"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "data:,"}},
                    ],
                },
            ],
            "extra_body": {"enable_thinking": False, "tokenize": True},
        }
    )
    assert out["messages"][0]["role"] == "system"
    assert out["messages"][1]["content"] == [{"type": "text", "text": "look"}]
    assert out["extra_body"] == {"enable_thinking": False}


def test_forbidden_fields_and_error_shapes() -> None:
    assert compat.forbidden_fields({"adapter_path": "x", "extra_body": {"draft_model": "y"}}) == [
        "adapter_path",
        "extra_body.draft_model",
    ]
    assert compat.forbidden_fields({"model": "a", "messages": []}) == []
    openai = compat.error_body("openai", 404, "nope", code="model_not_found")
    assert openai == {
        "error": {
            "message": "nope",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }
    assert compat.error_body("anthropic", 503, "busy") == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "busy"},
    }
    assert "prompt is too long" in compat.context_error("anthropic", 9000, 4096)["error"]["message"]


def test_alias_map_file_round_trips_privately(tmp_path: Path) -> None:
    alias_map = AliasMap.model_validate(
        {"default": "c", "models": {"c": {"path": "/store/c", "context": 1000, "digest": "ab"}}}
    )
    target = tmp_path / "run" / "aliases.json"
    save_alias_map(target, alias_map)
    assert load_alias_map(target) == alias_map
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    target.write_text("{not json")
    with pytest.raises(ConfigError):
        load_alias_map(target)


def test_the_gateway_names_who_holds_its_port() -> None:
    from local_ai.server.gateway.main import _bind

    port = free_port()
    config = server_config(Manifest.model_validate({"server": {"port": port}}), None)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(PortInUseError) as caught:
            _bind(config).close()
    assert str(caught.value) == f"port {port} is already in use by " + (
        f"{caught.value.holder} (127.0.0.1:{port})"
    )
    assert f"pid {os.getpid()}" in (caught.value.holder or "")
    assert caught.value.hint == "stop that process or set server.port in the manifest"


def test_server_config_hosts_origins_and_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = Manifest.model_validate(
        {"server": {"port": 9000, "cors_origins": ["https://app.example"]}}
    )
    config = server_config(manifest, None)
    assert config.url == "http://127.0.0.1:9000"
    hosts = config.allowed_hosts()
    assert {"127.0.0.1:9000", "localhost:9000", "[::1]:9000", "localhost"} <= hosts
    assert "evil.example:9000" not in hosts
    assert "http://localhost:9000" in config.allowed_origins()
    assert "https://app.example" in config.allowed_origins()
    assert config.api_key is None
    keyed = Manifest.model_validate({"server": {"host": "0.0.0.0", "api_key_env": "MY_KEY"}})
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ConfigError, match="MY_KEY"):
        server_config(keyed, None)
    monkeypatch.setenv("MY_KEY", "k" * 16)
    wide = server_config(keyed, None)
    assert wide.api_key == "k" * 16
    assert len(wide.allowed_hosts()) > 6  # this machine's names and addresses too
    changed = manifest.model_copy(update={"server": manifest.server.model_copy(update={"port": 1})})
    assert config_hash(changed) != config_hash(manifest)


def test_pidfile_identity_uses_the_start_time() -> None:
    me = os.getpid()
    started = process_start_time(me)
    assert started is not None
    assert is_same_process(me, started)
    assert not is_same_process(me, started - 5)  # same pid, another process start: reused
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    assert not is_same_process(done.pid, time.time())
    assert not is_same_process(None, started)


def test_launchd_plist_content(tmp_path: Path) -> None:
    manifest = tmp_path / "local-ai.toml"
    plist = launchd.build_plist(
        manifest,
        state_home=tmp_path / "state",
        python="/opt/venv/bin/python",
        environ={"PATH": "/usr/bin:/bin", "HF_HOME": "/hf", "SECRET": "s" * 20, "OTHER": "x"},
        api_key_env="SECRET",
    )
    parsed = plistlib.loads(launchd.render_plist(plist))
    assert parsed["Label"] == "dev.local-ai.server"
    assert parsed["ProgramArguments"] == [
        "/opt/venv/bin/python",
        "-m",
        "local_ai",
        "server",
        "start",
        "--foreground",
        "--config",
        str(manifest),
    ]
    env = parsed["EnvironmentVariables"]
    assert env["LOCAL_AI_HOME"] == str(tmp_path / "state")
    assert env["LOCAL_AI_CONFIG"] == str(manifest)
    assert env["PATH"] == "/usr/bin:/bin" and env["HF_HOME"] == "/hf"
    assert env["SECRET"] == "s" * 20 and "OTHER" not in env
    assert parsed["StandardOutPath"] == str(tmp_path / "state" / "logs" / "server.log")
    assert parsed["StandardErrorPath"] == parsed["StandardOutPath"]
    assert parsed["RunAtLoad"] is True
    assert parsed["KeepAlive"] == {"SuccessfulExit": False}
    assert parsed["WorkingDirectory"] == str(tmp_path / "state")


def test_enable_prints_the_plist_and_refuses_to_install_off_macos(tmp_path: Path) -> None:
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text('version = 1\n[models.a]\nrepo = "org/a"\n')
    printed = run_cli("server", "enable", "--print", "-c", str(manifest))
    assert printed.returncode == 0, printed.stderr
    parsed = plistlib.loads(printed.stdout.encode())
    assert parsed["ProgramArguments"][1:] == [
        "-m",
        "local_ai",
        "server",
        "start",
        "--foreground",
        "--config",
        str(manifest.resolve()),
    ]
    assert parsed["EnvironmentVariables"]["LOCAL_AI_HOME"] == os.environ["LOCAL_AI_HOME"]
    if sys.platform != "darwin":
        installed = run_cli("server", "enable", "-c", str(manifest))
        assert installed.returncode != 0
        assert "only on macOS" in installed.stderr
        with pytest.raises(NotYetError):
            launchd.disable()


def test_gateway_connections_have_nagle_off() -> None:
    # With Nagle on, each small SSE write after the first waits for the client's delayed ACK
    # (~40 ms): streamed tokens arrive in bursts and every keep-alive request pays 40 ms.
    import asyncio
    import socket

    from local_ai.server.gateway.main import _bind

    manifest = Manifest.model_validate({"server": {"port": free_port()}})
    listener = _bind(server_config(manifest, None))

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(connected, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
            return value

    assert asyncio.run(accepted_nodelay()) != 0
