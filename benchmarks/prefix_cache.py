"""Time to first token with a warm shared prefix vs cold, as Claude Code sends requests.

Claude Code repeats a long system prompt every turn, with one line that changes on every request
(`x-anthropic-billing-header: …`). The gateway strips that line, so the engine's prompt cache can
reuse the prefix. This runs, against one `local-ai server` daemon and a small fp32 qwen3 of the
test harness (hidden 128, 2 layers: MLX's CPU backend prefills 8k tokens of it in about a
minute):

- cold: each request's system prompt differs in its first line (nothing to reuse);
- warm: the same system prompt, only the billing line changes (as Claude Code does);
- after restart: `local-ai server restart`, then the warm prompt again: nothing is in memory, the
  engine reads the prefix's KV cache from its disk cache (LOCAL_AI_HOME/cache/prompts);

cold and warm interleaved `--rounds` times, the restart case `--restarts` times; reports median
TTFTs and their ratios to cold.

    uv run python -m benchmarks prefix [--prompt-tokens 8000] [--rounds 2] [--restarts 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from tests.server_helpers import Daemon, build_chat_model, free_port, wait_for, write_manifest

from benchmarks.report import header as report_header
from benchmarks.report import write as write_report

# Small enough that a cold 8k-token prefill takes about a minute on MLX's CPU backend.
MODEL_SHAPE = {"hidden_size": 128, "num_layers": 2, "intermediate_size": 256}
_WORDS = ("tool", "file", "edit", "read", "grep", "test", "plan", "code", "diff", "run")


def system_prompt(tokens: int, first_line: str) -> str:
    # The harness tokenizer splits these words into about two tokens each.
    body = " ".join(_WORDS[i % len(_WORDS)] for i in range(tokens // 2))
    return f"{first_line}\nYou are a coding agent. Rules: {body}"


def ttft(url: str, system: str) -> float:
    body = {
        "model": "bench",
        "max_tokens": 4,
        "stream": True,
        "system": system,
        "messages": [{"role": "user", "content": "Say hi."}],
    }
    start = time.perf_counter()
    first: float | None = None
    with httpx.stream(
        "POST", f"{url}/anthropic/v1/messages", json=body, timeout=600, trust_env=False
    ) as response:
        if response.status_code != 200:
            response.read()
            raise SystemExit(f"HTTP {response.status_code}: {response.text[:400]}")
        for line in response.iter_lines():  # read to the end, as Claude Code does
            if first is None and line.startswith("data:") and '"text_delta"' in line:
                first = time.perf_counter()
    return (first or time.perf_counter()) - start


def preloaded(url: str) -> bool:
    try:
        status = httpx.get(f"{url}/api/status", timeout=2, trust_env=False).json()
    except (httpx.HTTPError, ValueError):
        return False
    return any(m.get("loaded") for m in status.get("models", []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks prefix", description=__doc__)
    parser.add_argument("--prompt-tokens", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="local-ai-bench-prefix-") as tmp:
        work = Path(tmp)
        model = build_chat_model(work / "qwen3-small", **MODEL_SHAPE)
        port = free_port()
        manifest = write_manifest(
            work,
            port=port,
            models={"bench": model},
            context=args.prompt_tokens + 2048,
            server_extra='preload = ["bench"]',
        )
        daemon = Daemon(home=work / "state", manifest=manifest, port=port)
        started = daemon.start()
        if started.returncode != 0:
            print(started.stderr, file=sys.stderr)
            return 1
        cold: list[float] = []
        warm: list[float] = []
        restarted: list[float] = []
        shared = system_prompt(args.prompt_tokens, "Project: local-ai.")

        def billed() -> str:
            billing = f"x-anthropic-billing-header: cc_version=2.1; cch={uuid.uuid4().hex};"
            return billing + "\n" + shared

        try:
            # Prime the warm prefix once (its first request is cold by definition).
            ttft(daemon.url, billed())
            for _ in range(args.rounds):
                warm.append(ttft(daemon.url, billed()))
                cold.append(
                    ttft(
                        daemon.url,
                        system_prompt(args.prompt_tokens, f"Session {uuid.uuid4().hex}."),
                    )
                )
            for _ in range(args.restarts):
                again = daemon.cli("server", "restart", "--json")
                if again.returncode != 0:
                    raise SystemExit(f"restart failed: {again.stderr}")
                wait_for(lambda: preloaded(daemon.url), 120, 0.2)
                restarted.append(ttft(daemon.url, billed()))
        finally:
            daemon.cli("server", "stop")

    report: dict[str, Any] = {
        **report_header("prefix_cache"),
        "model": f"qwen3 fp32 {MODEL_SHAPE} (tests.server_helpers.build_chat_model)",
        "system_prompt_tokens_approx": args.prompt_tokens,
        "rounds": args.rounds,
        "cold_ttft_s": [round(x, 4) for x in cold],
        "warm_ttft_s": [round(x, 4) for x in warm],
        "cold_median_s": round(statistics.median(cold), 4),
        "warm_median_s": round(statistics.median(warm), 4),
        "after_restart_ttft_s": [round(x, 4) for x in restarted],
        "after_restart_median_s": round(statistics.median(restarted), 4) if restarted else None,
    }
    report["warm_over_cold"] = round(report["warm_median_s"] / report["cold_median_s"], 3)
    if restarted:
        report["after_restart_over_cold"] = round(
            report["after_restart_median_s"] / report["cold_median_s"], 3
        )
    print(f"cold TTFT median {report['cold_median_s'] * 1000:8.0f} ms")
    print(f"warm TTFT median {report['warm_median_s'] * 1000:8.0f} ms")
    print(f"warm / cold      {report['warm_over_cold']:8.3f}")
    if restarted:
        print(f"after restart    {report['after_restart_median_s'] * 1000:8.0f} ms (disk cache)")
        print(f"restart / cold   {report['after_restart_over_cold']:8.3f}")
    out = write_report(report, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
