"""What the engine does with model directories, through a real daemon: code in a model directory
never runs; the model cache size and idle TTL from the manifest are enforced, and after a change
and `local-ai apply` the running engine enforces the new values."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server_helpers import (
    Daemon,
    build_chat_model,
    build_mlx_chat_model,
    free_port,
    wait_for,
    write_manifest,
)

# Long enough that a model stays loaded from its answer to the next status read while b loads
# on a busy machine; short enough to wait out.
IDLE_TTL_S = 6


def chat(client: httpx.Client, alias: str) -> httpx.Response:
    body = {
        "model": alias,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "temperature": 0,
    }
    return client.post("/v1/chat/completions", json=body)


def status(client: httpx.Client) -> dict[str, Any]:
    return dict(client.get("/api/status").json())


def loaded(client: httpx.Client) -> set[str]:
    return {m["alias"] for m in status(client)["models"] if m["loaded"]}


@pytest.fixture
def started() -> Iterator[list[Daemon]]:
    daemons: list[Daemon] = []
    yield daemons
    for d in daemons:
        d.cli("server", "stop", "--timeout", "5")
        d.kill()


def with_code(
    directory: Path, marker: Path, config: dict[str, Any], tokenizer: dict[str, Any]
) -> Path:
    """A tiny model whose directory holds evil.py (it writes `marker`, then raises if imported)
    and whose config files point at it."""
    build_chat_model(directory)
    (directory / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "raise RuntimeError('code from the model directory ran')\n"
    )
    for name, extra in (("config.json", config), ("tokenizer_config.json", tokenizer)):
        doc = json.loads((directory / name).read_text())
        (directory / name).write_text(json.dumps({**doc, **extra}))
    return directory


def test_code_in_a_model_directory_never_runs(tmp_path: Path, started: list[Daemon]) -> None:
    marker = tmp_path / "code-ran"
    # With trust_remote_code=True transformers imports evil.py for either auto_map.
    auto_map = with_code(
        tmp_path / "auto-map",
        marker,
        {"auto_map": {"AutoConfig": "evil.Config", "AutoTokenizer": ["evil.Tokenizer", None]}},
        {"auto_map": {"AutoTokenizer": ["evil.Tokenizer", None]}},
    )
    # mlx-lm imports a config.json's model_file whatever trust_remote_code says.
    model_file = with_code(tmp_path / "model-file", marker, {"model_file": "evil.py"}, {})
    port = free_port()
    manifest = write_manifest(tmp_path, port=port, models={"automap": auto_map, "own": model_file})
    daemon = Daemon(home=tmp_path / "home", manifest=manifest, port=port)
    started.append(daemon)
    result = daemon.start()
    assert result.returncode == 0, result.stderr + daemon.log()

    with httpx.Client(base_url=daemon.url, timeout=60, trust_env=False) as client:
        # The tokenizer alone (count_tokens before any load), then the model.
        counted = client.post(
            "/anthropic/v1/messages/count_tokens",
            json={"model": "automap", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert counted.status_code == 200, counted.text
        assert counted.json()["input_tokens"] > 0
        answer = chat(client, "automap")
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"]

        refused = chat(client, "own")
        assert refused.status_code == 500
        message = refused.json()["error"]["message"]
        assert "model_file" in message and "config.json" in message
        assert loaded(client) == {"automap"}
        own = next(m for m in status(client)["models"] if m["alias"] == "own")
        assert "model_file" in (own["error"] or "")
        assert chat(client, "automap").status_code == 200  # the engine is still fine
        assert status(client)["engine"]["restarts"] == 0
    assert not marker.exists()
    assert "code from the model directory ran" not in daemon.log("engine.log")


def test_cache_size_and_idle_ttl_follow_the_manifest_through_apply(
    tmp_path: Path, started: list[Daemon]
) -> None:
    # MLX (quantized) directories: apply serves them as they are, without converting.
    models = {
        "a": build_mlx_chat_model(tmp_path / "a"),
        "b": build_mlx_chat_model(tmp_path / "b", seed=1),
    }
    port = free_port()
    manifest = write_manifest(
        tmp_path, port=port, models=models, engine_extra='max_loaded_models = 1\nidle_ttl = "0s"'
    )
    manifest.write_text(manifest.read_text() + "[benchmark]\non_apply = false\n")
    daemon = Daemon(home=tmp_path / "home", manifest=manifest, port=port)
    started.append(daemon)
    result = daemon.start()
    assert result.returncode == 0, result.stderr + daemon.log()

    with httpx.Client(base_url=daemon.url, timeout=60, trust_env=False) as client:
        engine = status(client)["engine"]
        assert (engine["max_loaded_models"], engine["idle_ttl_s"]) == (1, 0)
        assert chat(client, "a").status_code == 200
        assert loaded(client) == {"a"}
        assert chat(client, "b").status_code == 200
        assert loaded(client) == {"b"}  # one model at most: a, least recently used, went

        manifest.write_text(
            manifest.read_text()
            .replace("max_loaded_models = 1", "max_loaded_models = 2")
            .replace('idle_ttl = "0s"', f'idle_ttl = "{IDLE_TTL_S}s"')
        )
        gateway_pid = daemon.pidfile()["pid"]
        # The warm standby, imported under the old settings, is what restart-engine promotes.
        assert wait_for(lambda: status(client)["engine"]["standby_pid"], 60, interval=0.2)
        standby = status(client)["engine"]["standby_pid"]
        applied = daemon.cli("apply", "--yes")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        # The plan it carried out: the engine restarts, the gateway does not.
        assert "server.engine.max_loaded_models 1 → 2" in applied.stdout
        assert f"server.engine.idle_ttl 0s → {IDLE_TTL_S}s" in applied.stdout
        assert "restart-engine" in applied.stdout and "restart-server" not in applied.stdout
        assert "✓ restart-engine" in applied.stderr

        engine = status(client)["engine"]
        assert daemon.pidfile()["pid"] == gateway_pid  # the gateway stayed up
        assert engine["pid"] == standby
        assert (engine["max_loaded_models"], engine["idle_ttl_s"]) == (2, IDLE_TTL_S)
        # It reports the settings the manifest means (one form of them): nothing left to plan.
        assert daemon.cli("plan", "--detailed-exitcode").returncode == 0
        assert chat(client, "a").status_code == 200
        assert chat(client, "b").status_code == 200
        assert loaded(client) == {"a", "b"}  # two fit now
        # Idle for more than the TTL (checked every second): both unloaded.
        assert wait_for(lambda: not loaded(client), 30, interval=0.2)
        assert chat(client, "a").status_code == 200  # and loaded again on the next request
        assert loaded(client) == {"a"}
