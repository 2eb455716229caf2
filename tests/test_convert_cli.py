"""`local-ai models convert` end to end: the real CLI in a subprocess, its worker process, the
store, the fake hub, and what a kill -9 leaves behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from local_ai.store.layout import PROVENANCE_FILE
from tests.clirunner import run_cli
from tests.convert_helpers import TEXT
from tests.harness import gguf_export as ge
from tests.harness import tinymodels as tm
from tests.harness.fakehub import FakeHub


def _convert(*args: str) -> dict[str, Any]:
    result = run_cli("models", "convert", *args, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _generates(path: Path) -> None:
    from mlx_lm import generate, load

    model, tokenizer = load(str(path))
    text = generate(model, tokenizer, prompt="Hello", max_tokens=3)
    assert isinstance(text, str)
    original = tm.tokenizer_json("qwen3")  # the same vocabulary survived the trip
    assert len(tokenizer.encode(TEXT)) > 10 and len(original["added_tokens"]) > 0


def test_local_gguf_into_the_store_then_reused(isolated_home: Path, tmp_path: Path) -> None:
    model = tm.build_model(tmp_path / "m", "qwen3")
    source = ge.export_gguf(model, tmp_path / "tiny-Q8_0.gguf", "Q8_0")
    first = _convert(str(source), "-q", "q4")
    path = Path(first["path"])
    assert path.parent == isolated_home / "store" and not first["reused"]
    assert path.name.startswith(first["digest"]) and "tiny-Q8_0-q4" in path.name
    provenance = json.loads((path / PROVENANCE_FILE).read_text())
    assert provenance["recipe"] == {"level": "q4", "group_size": 64, "dtype": None}
    assert provenance["source"]["files"][0]["sha256"]
    assert provenance["result"]["architecture"] == "qwen3"
    assert json.loads((path / "config.json").read_text())["quantization"]["bits"] == 4
    _generates(path)
    again = _convert(str(source), "-q", "q4")
    assert again["reused"] and again["path"] == first["path"]
    assert not list((isolated_home / "staging").iterdir())


def test_hub_gguf_and_safetensors_repos(fake_hub: FakeHub, tmp_path: Path) -> None:
    model = tm.build_model(tmp_path / "m", "qwen3")
    gguf_bytes = ge.export_gguf(model, tmp_path / "x.gguf", "Q4_0").read_bytes()
    fake_hub.add_repo("org/tiny-GGUF", {"tiny-Q4_0.gguf": gguf_bytes, "README.md": "# t\n"})
    commit = fake_hub.add_repo_from_dir("org/tiny-hf", model)

    out = tmp_path / "converted"
    data = _convert("org/tiny-GGUF:tiny-Q4_0.gguf", "-q", "fp16", "--out", str(out))
    assert Path(data["path"]) == out and data["source"].startswith("org/tiny-GGUF:tiny-Q4_0")
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["source"]["repo"] == "org/tiny-GGUF"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".converted")]
    _generates(out)

    data = _convert("org/tiny-hf", "-q", "q8")
    provenance = json.loads((Path(data["path"]) / PROVENANCE_FILE).read_text())
    assert (
        provenance["source"]["commit"] == commit and provenance["source"]["kind"] == "safetensors"
    )
    _generates(Path(data["path"]))


def test_auto_picks_a_level_and_bad_levels_fail_cleanly(tmp_path: Path) -> None:
    from tests.harness.tinymodels import build_model

    src = build_model(tmp_path / "src", "qwen3")
    out = tmp_path / "auto-out"
    result = run_cli("models", "convert", str(src), "-q", "auto", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    # A 32-bit tiny source fits anywhere: the best quality auto offers without upcasting.
    assert json.loads(result.stdout)["recipe"]["level"] == "bf16"
    assert (out / "config.json").is_file()
    empty = run_cli("models", "convert", str(tmp_path / "nothing-here"), "-q", "auto")
    assert empty.returncode != 0 and "Traceback" not in empty.stderr
    result = run_cli("models", "convert", str(tmp_path), "-q", "q7")
    assert "unknown quantization level 'q7'" in result.stderr and "Traceback" not in result.stderr


def test_malformed_gguf_is_a_clean_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (1 << 62).to_bytes(8, "little") * 2)
    result = run_cli("models", "convert", str(bad), "-q", "q4")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{bad}: header.tensor_count" in result.stderr


@pytest.fixture(scope="module")
def slow_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Large enough (25.7M parameters) that writing the shards takes a moment."""
    root = tmp_path_factory.mktemp("slow")
    model = tm.build_qwen3_25m(root / "m")
    return ge.export_gguf(model, root / "q25-F16.gguf", "F16")


def _start(source: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "local_ai", "models", "convert", str(source), "-q", "bf16"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _is_converting(process: psutil.Process) -> bool:
    try:
        return "local_ai.convert.worker" in " ".join(process.cmdline())
    except psutil.Error:  # the finished inspect worker, a zombie until reaped
        return False


def _worker_when_writing(cli: subprocess.Popen[str], staging: Path) -> psutil.Process:
    """The worker, once it has started writing shards into the staging entry."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shards = list(staging.glob("*/model*.safetensors")) if staging.is_dir() else []
        workers = [p for p in psutil.Process(cli.pid).children() if _is_converting(p)]
        if shards and workers:
            return workers[0]
        assert cli.poll() is None, cli.communicate()
        time.sleep(0.002)
    raise AssertionError("the conversion never started writing")


def test_killed_worker_leaves_nothing(slow_gguf: Path, isolated_home: Path, tmp_path: Path) -> None:
    cli = _start(slow_gguf)
    worker = _worker_when_writing(cli, isolated_home / "staging")
    worker.send_signal(signal.SIGKILL)
    _, stderr = cli.communicate(timeout=60)
    assert cli.returncode != 0 and "killed by SIGKILL" in stderr and "Traceback" not in stderr
    assert not list((isolated_home / "store").iterdir())
    assert not list((isolated_home / "staging").iterdir())


def test_killed_cli_takes_its_worker_along(slow_gguf: Path, isolated_home: Path) -> None:
    from local_ai import settings
    from local_ai.store.layout import Store

    cli = _start(slow_gguf)
    worker = _worker_when_writing(cli, isolated_home / "staging")
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    worker.wait(timeout=10)  # it notices its parent is gone (no orphan keeps writing)
    assert not list((isolated_home / "store").iterdir())
    store = Store(settings.paths())
    assert store.leftovers()  # the half-written staging entry, to be cleaned on next start
    store.clean_leftovers()
    assert not list((isolated_home / "staging").iterdir())


def test_help_lists_the_architectures_and_a_low_bit_gguf_warns(tmp_path: Path) -> None:
    """``--help`` shows the architecture list from convert/archs.py; converting a GGUF stored
    below 8 bits prints the compounding-error warning, naming the GGUF's base_model repo."""
    from local_ai.convert.archs import GGUF_ARCHITECTURES

    shown = run_cli("models", "convert", "--help")
    assert shown.returncode == 0, shown.stderr
    help_text = " ".join(shown.stdout.split())
    assert f"GGUF architectures: {', '.join(GGUF_ARCHITECTURES)}" in help_text
    assert {"llama", "qwen3moe", "gemma3", "deepseek2", "glm4moe"} <= set(GGUF_ARCHITECTURES)

    model = tm.build_model(tmp_path / "m", "qwen3")
    low = ge.export_gguf(model, tmp_path / "low-Q4_0.gguf", "Q4_0", base_model="Org/Base-7B")
    result = run_cli("models", "convert", str(low), "-q", "q4", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    warning = " ".join(result.stderr.split())
    assert "warning: the GGUF's weights are already quantized below 8 bits (Q4_0)" in warning
    assert "compounds the quantization error" in warning and "repo instead: Org/Base-7B" in warning
    assert warning.count("compounds") == 1  # said once, before converting
