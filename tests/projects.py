"""A project directory with a manifest, driven through the real `local-ai` CLI in subprocesses,
against the fake hub serving a real tiny chat model (shared by apply, bench and client tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from local_ai import settings
from tests.harness.fakehub import FakeHub
from tests.server_helpers import build_chat_model, free_port

MLX = "mlx-community/tiny-chat"
HF = "org/tiny-chat"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_chat_model(tmp_path_factory.mktemp("models") / "chat")


@pytest.fixture
def tiny_hub(fake_hub: FakeHub, chat_model: Path) -> FakeHub:
    fake_hub.add_repo_from_dir(MLX, chat_model, metadata={"library_name": "mlx", "tags": ["mlx"]})
    fake_hub.add_repo_from_dir(HF, chat_model, metadata={"library_name": "transformers"})
    return fake_hub


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Project:
    def __init__(self, directory: Path, home: Path) -> None:
        self.dir = directory
        self.home = home
        self.port = free_port()
        self.manifest = directory / "local-ai.toml"

    def write(
        self,
        models: str,
        *,
        server: str = "",
        engine: str = "",
        bench: bool = False,
        extra: str = "",
    ) -> None:
        """The manifest: `extra` goes into [benchmark]."""
        self.manifest.write_text(
            "version = 1\n"
            f"[server]\nport = {self.port}\n{server}\n"
            f"[server.engine]\n{engine}\n"
            f"[benchmark]\non_apply = {'true' if bench else 'false'}\n"
            f"prompt_tokens = 16\ngen_tokens = 8\n{extra}" + models
        )

    def env(self, failpoint: str | None = None, *, stop: bool = False) -> dict[str, str]:
        """The environment of a `local-ai` subprocess for this project; with `failpoint`, armed
        to SIGKILL itself there (or, with `stop`, to SIGSTOP itself: resume it with SIGCONT)."""
        env = {
            **os.environ,
            "NO_COLOR": "1",
            "COLUMNS": "200",
            "LOCAL_AI_CONFIG": str(self.manifest),
        }
        if failpoint is not None:
            env[settings.ENV_FAILPOINT] = failpoint
            if stop:
                env[settings.ENV_FAILPOINT_ACTION] = "stop"
        return env

    def cli(
        self, *args: str, timeout: float = 180, failpoint: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "local_ai", *args],
            capture_output=True,
            text=True,
            env=self.env(failpoint),
            cwd=self.dir,
            timeout=timeout,
            check=False,
        )

    def popen(
        self,
        *args: str,
        failpoint: str | None = None,
        stop: bool = False,
        sigint_ignored: bool = False,
    ) -> subprocess.Popen[str]:
        """`local-ai ARGS`, output (stdout and stderr) on a pipe. `sigint_ignored` starts it as
        a shell starts a script's `cmd &`: with SIGINT ignored, which Ctrl-C must still stop."""
        return subprocess.Popen(
            [sys.executable, "-m", "local_ai", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env(failpoint, stop=stop),
            cwd=self.dir,
            preexec_fn=_ignore_sigint if sigint_ignored else None,
        )

    def live(self) -> dict[str, tuple[str, str | None, str | None]]:
        """The running server's own account of each alias, alias → (path, digest,
        quantization): the admin view carries the path."""
        token = (self.home / "run" / "admin-token").read_text().strip()
        response = httpx.get(
            f"http://127.0.0.1:{self.port}/api/status",
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
            trust_env=False,
        )
        response.raise_for_status()
        models = response.json()["models"]
        return {m["alias"]: (m["path"], m["digest"], m["quantization"]) for m in models}

    def chat(self, alias: str) -> httpx.Response:
        return httpx.post(
            f"http://127.0.0.1:{self.port}/v1/chat/completions",
            json={"model": alias, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            timeout=60,
            trust_env=False,
        )

    def chat_when_ready(self, alias: str, within: float = 180.0) -> httpx.Response:
        """`chat`, retried while the gateway answers 503 (an engine still restarting on a loaded
        machine), as a client honouring Retry-After would."""
        deadline = time.monotonic() + within
        while True:
            response = self.chat(alias)
            if response.status_code != 503 or time.monotonic() > deadline:
                return response
            time.sleep(min(float(response.headers.get("retry-after", "1") or 1), 5.0))

    def served_paths(self) -> dict[str, str]:
        data = json.loads((self.home / "run" / "aliases.json").read_text())
        return {alias: entry["path"] for alias, entry in data["models"].items()}

    def state(self) -> dict[str, object]:
        return dict(json.loads((self.home / "state.json").read_text()))


@pytest.fixture
def project(tmp_path: Path, isolated_home: Path) -> Iterator[Project]:
    proj = Project(tmp_path / "work", isolated_home)
    yield proj
    proj.cli("server", "stop", timeout=60)
