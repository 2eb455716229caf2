"""`local-ai bench` against the real daemon with a tiny model: the figures are there and
plausible (never asserted as speeds), results are kept, and benchmark.gate holds a slow model
out of service."""

from __future__ import annotations

import json

from tests.harness.fakehub import FakeHub
from tests.projects import HF, MLX, Project

MODELS = f"""
[models.chat]
repo = "{MLX}"
context = 4096
"""


def test_bench_measures_through_the_server_and_keeps_results(
    tiny_hub: FakeHub, project: Project
) -> None:
    project.write(MODELS)
    assert project.cli("apply", "--yes").returncode == 0
    run = project.cli(
        "bench", "chat", "--prompt-tokens", "64", "--gen-tokens", "12",
        "--concurrency", "1,2", "--repeat", "2", "--raw", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    (result,) = json.loads(run.stdout)["results"]
    assert result["alias"] == "chat" and "/snapshots/" in result["model_path"]
    assert result["versions"]["mlx"] and result["machine"]
    levels = {level["concurrency"]: level for level in result["levels"]}
    assert set(levels) == {1, 2}
    for level in levels.values():
        # The tiny chat model never emits an end token: every stream runs to --gen-tokens.
        assert level["generated_tokens"] == 12
        assert level["prompt_tokens"] >= 50
        assert 0 < level["ttft_s"]["min"] <= level["ttft_s"]["median"] <= level["ttft_s"]["max"]
        assert level["decode_tps_per_stream"]["median"] > 0
        assert level["latency_s"]["median"] >= level["ttft_s"]["median"]
    assert levels[2]["aggregate_decode_tps"]["median"] > 0
    # The engine's counters, read around each level: alone, one decode step per token; two
    # streams share steps when they overlap (how much depends on timing, bounded here).
    assert levels[1]["steps_per_token"] == 1.0 and levels[1]["decode_steps"] == 2 * 12
    assert 0.5 <= levels[2]["steps_per_token"] <= 1.0
    assert result["engine_peak_memory_bytes"] is None or result["engine_peak_memory_bytes"] > 0
    assert result["raw"]["generated_tokens"] == 12 and result["raw"]["decode_tps"] > 0
    assert result["overhead"]["per_token_ms"] is not None

    table = project.cli(
        "bench", "chat", "--gen-tokens", "4", "--prompt-tokens", "16", "--repeat", "1"
    )
    assert table.returncode == 0, table.stderr
    assert "decode tok/s per stream" in table.stdout and "chat" in table.stdout
    assert "steps/token" in table.stdout

    history = json.loads(project.cli("bench", "--history", "--json").stdout)["history"]
    assert [h["source"] for h in history] == ["bench", "bench"]
    listed = json.loads(project.cli("models", "list", "--json").stdout)["models"]
    assert listed[0]["decode_tps"] == history[-1]["levels"][0]["decode_tps_per_stream"]["median"]

    status = json.loads(project.cli("status", "--json").stdout)
    assert status["models"][0]["decode_tps"] == listed[0]["decode_tps"]

    unknown = project.cli("bench", "nope")
    assert unknown.returncode == 64 and "served aliases: chat" in unknown.stderr


def test_bench_needs_a_running_server(project: Project) -> None:
    project.write(MODELS)
    result = project.cli("bench")
    assert result.returncode == 1
    assert "local-ai server start" in result.stderr


def test_apply_benchmarks_new_models_and_gate_keeps_the_previous_generation(
    tiny_hub: FakeHub, project: Project
) -> None:
    project.write(MODELS, bench=True)
    first = project.cli("apply", "--yes")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "✓ benchmark:chat" in first.stderr and "tok/s decode" in first.stderr
    served = project.served_paths()

    # A new model that cannot meet an impossible floor: reported, and with gate the server
    # goes back to generation 1 instead of serving it.
    slow = (
        MODELS + f'[models.conv]\nrepo = "{HF}"\nquantize = "fp16"\nmin_tokens_per_second = 1e9\n'
    )
    project.write(slow, bench=True, extra="gate = true\n")
    gated = project.cli("apply", "--yes")
    assert gated.returncode == 1, gated.stdout + gated.stderr
    assert "below the 1e+09 tok/s asked for" in gated.stderr
    assert "stays on generation 1" in gated.stdout
    assert project.served_paths() == served
    assert "conv" in project.state()["models"]  # type: ignore[operator]
    records = project.state()["benchmarks"]
    assert [r["alias"] for r in records] == ["chat", "conv"]  # type: ignore[union-attr]
    models = project.state()["models"]
    assert "tok/s < 1e+09" in models["conv"]["rejected"]  # type: ignore[index]

    # The rejected build is not served silently by the next apply: plan says it is measured again.
    plan = project.cli("plan")
    conv_block = plan.stdout.split("model.conv", 1)[1].split("server", 1)[0]
    assert "benchmark" in conv_block, plan.stdout
    assert "kept out of service by benchmark.gate" in conv_block

    # With a floor it can meet, the next apply measures it, serves it and clears the verdict.
    project.write(
        MODELS
        + f'[models.conv]\nrepo = "{HF}"\nquantize = "fp16"\nmin_tokens_per_second = 0.001\n',
        bench=True,
        extra="gate = true\n",
    )
    passed = project.cli("apply", "--yes")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "✓ benchmark:conv" in passed.stderr
    assert "conv" in project.served_paths()
    assert project.state()["models"]["conv"]["rejected"] is None  # type: ignore[index]
    assert "benchmark" not in project.cli("plan").stdout
