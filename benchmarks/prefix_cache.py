"""Time to first token with a warm shared prefix vs cold, as Claude Code sends requests.

Claude Code repeats a long system prompt every turn, with one line that changes on every request
(`x-anthropic-billing-header: …`). The gateway strips that line, so the engine's prompt cache can
reuse the prefix. This runs, against one `local-ai server` daemon and the ~25.7M-parameter fp32
qwen3 of the test harness:

- cold: each request's system prompt differs in its first line (nothing to reuse);
- warm: the same system prompt, only the billing line changes (as Claude Code does);

interleaved, `--rounds` times each, and reports median TTFT and the ratio.

    uv run python -m benchmarks prefix [--prompt-tokens 1000] [--rounds 3]
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
from tests.harness.tinymodels import QWEN3_25M
from tests.server_helpers import Daemon, build_chat_model, free_port, write_manifest

from benchmarks.report import header as report_header
from benchmarks.report import write as write_report

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks prefix", description=__doc__)
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="local-ai-bench-prefix-") as tmp:
        work = Path(tmp)
        model = build_chat_model(work / "qwen3-25m", **QWEN3_25M)
        port = free_port()
        manifest = write_manifest(
            work,
            port=port,
            models={"bench": model},
            context=2 * args.prompt_tokens + 2048,
            server_extra='preload = ["bench"]',
        )
        daemon = Daemon(home=work / "state", manifest=manifest, port=port)
        started = daemon.start()
        if started.returncode != 0:
            print(started.stderr, file=sys.stderr)
            return 1
        try:
            cold: list[float] = []
            warm: list[float] = []
            shared = "Project: local-ai."
            # Prime the warm prefix once (its first request is cold by definition).
            ttft(
                daemon.url,
                f"x-anthropic-billing-header: cch={uuid.uuid4().hex}\n"
                + system_prompt(args.prompt_tokens, shared),
            )
            for _ in range(args.rounds):
                billing = f"x-anthropic-billing-header: cc_version=2.1; cch={uuid.uuid4().hex};"
                warm.append(
                    ttft(daemon.url, billing + "\n" + system_prompt(args.prompt_tokens, shared))
                )
                cold.append(
                    ttft(
                        daemon.url,
                        system_prompt(args.prompt_tokens, f"Session {uuid.uuid4().hex}."),
                    )
                )
        finally:
            daemon.cli("server", "stop")

    report: dict[str, Any] = {
        **report_header("prefix_cache"),
        "model": "qwen3 25.7M fp32 (tests.harness.tinymodels.QWEN3_25M)",
        "system_prompt_tokens_approx": args.prompt_tokens,
        "rounds": args.rounds,
        "cold_ttft_s": [round(x, 4) for x in cold],
        "warm_ttft_s": [round(x, 4) for x in warm],
        "cold_median_s": round(statistics.median(cold), 4),
        "warm_median_s": round(statistics.median(warm), 4),
    }
    report["warm_over_cold"] = round(report["warm_median_s"] / report["cold_median_s"], 3)
    print(f"cold TTFT median {report['cold_median_s'] * 1000:8.0f} ms")
    print(f"warm TTFT median {report['warm_median_s'] * 1000:8.0f} ms")
    print(f"warm / cold      {report['warm_over_cold']:8.3f}")
    out = write_report(report, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
