"""Autouse isolation: every test gets its own LOCAL_AI_HOME and HF_HOME and no network."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from local_ai.cli import output
from tests.harness.fakehub import FakeHub, client_pointed_at, running_hub

# Fixtures for tests that drive a whole project through the CLI (tiny_hub, project).
pytest_plugins = ["tests.projects"]

_ISOLATED_VARS = (
    "LOCAL_AI_HOME",
    "LOCAL_AI_CONFIG",
    "LOCAL_AI_DEBUG",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
    "HF_TOKEN",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "NO_COLOR",
)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh state home, HF cache and working directory for each test."""
    for var in _ISOLATED_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "local-ai-home"
    hf_home = tmp_path / "hf-home"
    home.mkdir()
    hf_home.mkdir()
    monkeypatch.setenv("LOCAL_AI_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    # Anything that escapes to the real hub fails fast instead of touching the network.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))
    (tmp_path / "user-home").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # The CLI's consoles read COLUMNS when made: each test gets its own, made after its setenv.
    output.console.cache_clear()
    output.err_console.cache_clear()
    yield home
    output.console.cache_clear()
    output.err_console.cache_clear()


@pytest.fixture
def fake_hub(tmp_path: Path) -> Iterator[FakeHub]:
    """A HuggingFace Hub on 127.0.0.1 that the real huggingface_hub client talks to."""
    with running_hub() as hub, client_pointed_at(hub, tmp_path / "hf-home"):
        yield hub
