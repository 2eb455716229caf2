"""`local-ai models search` run as users run it (a subprocess) against the fake hub's catalogue,
an unreachable hub, and offline against the HuggingFace cache."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_ai.discovery import search as discovery
from local_ai.errors import ExitCode
from local_ai.hardware import GIB, detect
from local_ai.manifest.load import load_manifest
from tests.clirunner import run_cli
from tests.harness.catalogue import add_catalogue
from tests.harness.fakehub import FakeHub, running_hub
from tests.hub_repos import safetensors_bytes


@pytest.fixture(scope="module")
def catalogue() -> Iterator[FakeHub]:
    with running_hub() as hub:
        add_catalogue(hub)
        yield hub


def search(hub_url: str, *args: str, **env: str) -> tuple[int, str, str]:
    done = run_cli("models", "search", *args, env={"HF_ENDPOINT": hub_url, **env})
    return done.returncode, done.stdout, done.stderr


def test_table_ranks_variants_for_the_machine_and_names_the_next_step(
    catalogue: FakeHub,
) -> None:
    code, out, err = search(catalogue.url, "qwen3", "coder", "30b", "--memory", "36")
    assert code == 0, err
    assert "ranked for Apple Silicon (simulated 36 GB)" in out
    assert "Qwen/Qwen3-Coder-30B-A3B-Instruct · 30.5B params" in out
    first = next(line for line in out.splitlines() if line.startswith("★"))
    assert "mlx-community/Qwen3-Coder-30B-A3B-Instruct-4bit" in first and "yes" in first
    assert "… 8 more (--all)" in out
    assert "best here: mlx-community/Qwen3-Coder-30B-A3B-Instruct-4bit (4bit)" in out
    assert "add it: local-ai models add mlx-community/Qwen3-Coder-30B-A3B-Instruct-4bit" in out
    assert "ranking: fits this machine first" in out


def test_json_for_scripts_at_the_manifest_context(catalogue: FakeHub, tmp_path: Path) -> None:
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text(
        'version = 1\n[models.coder]\nrepo = "org/model"\ncontext = 16384\n', "utf-8"
    )
    code, out, err = search(
        catalogue.url, "devstral", "--memory", "24", "--json", "--all", "--config", str(manifest)
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["hardware"]["total_memory_bytes"] == 24 * 1024**3
    assert data["context"] == 16384 and not data["offline"] and data["source"] == "hub"
    (group,) = data["groups"]
    assert group["base_model"] == "mistralai/Devstral-Small-2507"
    top = group["variants"][0]
    # At 16k the MLX 4bit repo fits in 15.0 GiB (at 32k it does not: see test_discovery_ranking).
    assert (top["repo"], top["format"], top["quantize"], top["fits"]) == (
        "mlx-community/Devstral-Small-2507-4bit",
        "mlx",
        None,
        True,
    )
    assert top["kv_cache_bytes"] == 2 * 40 * 8 * 128 * 16384 * 2
    original = next(v for v in group["variants"] if v["format"] == "safetensors")
    assert (original["quantize"], original["fits"]) == ("q4", True)
    assert len(group["variants"]) == 6  # --all: 2 MLX, 1 original, 3 GGUF quantizations
    assert {"mlx-community"} == {p["author"] for p in data["publishers"]}
    assert "MLX-ready over safetensors" in data["ranking"]


def test_nothing_fits_explains_and_suggests(catalogue: FakeHub) -> None:
    code, out, err = search(catalogue.url, "glm-4.5-air", "--memory", "16")
    assert code == 0, err
    assert "nothing found fits this machine: the smallest variant" in out
    assert "9.7 GiB usable" in out
    assert "more machines: about" in out
    assert "★" not in out


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_hub_is_a_clear_error_with_exit_69() -> None:
    code, out, err = search(f"http://127.0.0.1:{_closed_port()}", "qwen3")
    assert code == ExitCode.UNAVAILABLE == 69
    assert out == ""
    assert "error: cannot search the hub: cannot reach the hub at http://127.0.0.1:" in err
    assert "local-ai models search --offline qwen3" in err
    assert "HF_HUB_OFFLINE=1" in err
    assert "Traceback" not in err


def _cache_repo(hf_home: Path, repo: str, files: dict[str, bytes]) -> Path:
    storage = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    commit = "c" * 40
    snapshot = storage / "snapshots" / commit
    for name, data in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(data)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    return snapshot


def test_offline_lists_matching_models_in_the_hf_cache(tmp_path: Path) -> None:
    config = {
        "model_type": "qwen3",
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "quantization": {"group_size": 64, "bits": 4},
    }
    _cache_repo(
        tmp_path / "hf-home",
        "mlx-community/Qwen3-Tiny-4bit",
        {"config.json": json.dumps(config).encode(), "model.safetensors": safetensors_bytes()},
    )
    _cache_repo(tmp_path / "hf-home", "org/unrelated-model", {"README.md": b"hi"})
    # The hub is unreachable, but offline mode never asks it.
    code, out, err = search(
        f"http://127.0.0.1:{_closed_port()}", "qwen3", "--json", HF_HUB_OFFLINE="1"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["offline"] and data["source"] == "local"
    (group,) = data["groups"]
    (variant,) = group["variants"]
    assert (variant["repo"], variant["location"], variant["quantization"]) == (
        "mlx-community/Qwen3-Tiny-4bit",
        "hf-cache",
        "4bit",
    )
    assert variant["kv_cache_bytes"] == 2 * 2 * 2 * 16 * 32768 * 2

    code, out, err = search(f"http://127.0.0.1:{_closed_port()}", "qwen3", "--offline")
    assert code == 0, err
    assert "qwen3 on this machine (offline)" in out
    assert "HF cache" in out


def test_add_by_name_writes_the_best_variant_for_this_machine(
    catalogue: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text("version = 1\n", "utf-8")
    done = run_cli(
        "models",
        "add",
        "qwen3-8b",
        "--no-apply",
        "--config",
        str(manifest),
        env={"HF_ENDPOINT": catalogue.url},
    )
    # The same decision made here, for this machine (its memory decides what fits).
    monkeypatch.setenv("HF_ENDPOINT", catalogue.url)
    expected = discovery.choose("qwen3-8b", detect(), 32768)
    if expected.best is None:
        assert done.returncode == 1 and "no variant of 'qwen3-8b' fits" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    assert f"chosen: {expected.best.variant.label}" in done.stderr
    spec = load_manifest(manifest).manifest.models["qwen3-8b"]
    assert spec.repo == expected.best.variant.repo
    assert spec.quantize == expected.best.quantize
    assert spec.name is not None and spec.name.startswith("Qwen3 8B")


def test_add_by_name_says_why_nothing_fits(catalogue: FakeHub, tmp_path: Path) -> None:
    if detect().usable_memory_bytes > 290 * GIB:
        pytest.skip("Kimi K2 at q2 fits a machine this big")
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text("version = 1\n", "utf-8")
    done = run_cli(
        "models",
        "add",
        "kimi-k2",
        "--no-apply",
        "--config",
        str(manifest),
        env={"HF_ENDPOINT": catalogue.url},
    )
    assert done.returncode == 1
    assert "error: no variant of 'kimi-k2' fits this machine: the smallest variant" in done.stderr
    assert "more machines: about" in done.stderr or "another" in done.stderr
    assert manifest.read_text("utf-8") == "version = 1\n"


def test_add_by_unknown_name_is_a_usage_error_pointing_at_search(
    catalogue: FakeHub, tmp_path: Path
) -> None:
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text("version = 1\n", "utf-8")
    done = run_cli(
        "models",
        "add",
        "no such model",
        "--no-apply",
        "--config",
        str(manifest),
        env={"HF_ENDPOINT": catalogue.url},
    )
    assert done.returncode == ExitCode.USAGE
    assert "no model matching 'no such model' was found on the hub" in done.stderr
    assert "local-ai models search no such model" in done.stderr
    assert manifest.read_text("utf-8") == "version = 1\n"


@pytest.mark.parametrize("context", [8192, 32768, 65536])
def test_search_and_plan_choose_the_same_auto_level(
    catalogue: FakeHub, tmp_path: Path, context: int
) -> None:
    """`models search` and `plan` with `quantize = "auto"`, on this machine at one context, pick
    the same level for an original (both call local_ai.sizing.choose_level, from the same
    config.json and weight files read through the hub)."""
    repo = "mistralai/Devstral-Small-2507"
    code, out, err = search(catalogue.url, "devstral", "--json", "--all", "--context", str(context))
    assert code == 0, err
    variants = [v for g in json.loads(out)["groups"] for v in g["variants"]]
    original = next(v for v in variants if v["repo"] == repo)
    manifest = tmp_path / "local-ai.toml"
    manifest.write_text(
        f'version = 1\n[models.dev]\nrepo = "{repo}"\nquantize = "auto"\ncontext = {context}\n',
        "utf-8",
    )
    plan = run_cli("plan", "--config", str(manifest), env={"HF_ENDPOINT": catalogue.url})
    if original["fits"]:
        assert plan.returncode == 0, plan.stdout + plan.stderr
        assert f"auto → {original['quantize']}: the best quality that fits" in plan.stdout
    else:
        assert plan.returncode != 0
        assert f"nothing fits, not even {original['quantize']}" in plan.stdout + plan.stderr
