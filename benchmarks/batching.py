"""Batched decoding: aggregate decode rate at 1, 2, 4 and 8 concurrent streams on one model,
local-ai side by side with `mlx_lm.server` (the peer with continuous batching), in one run.

    uv run python -m benchmarks batch                 # table on stdout + JSON
    uv run python -m benchmarks batch --no-peer       # skip mlx_lm.server
    uv run python -m benchmarks batch --single-only   # only one stream against raw, in pairs

Uses the ~25.7M-parameter fp32 qwen3 of the test harness (end tokens suppressed, greedy, so
every stream runs to --tokens). For each concurrency it reports the aggregate decode rate (all
streams' tokens over the window from the first stream's first token to the last stream's last
token) and, for local-ai, the engine's decode steps per generated token read from
/api/status (`engine.batch`): 1.0 means one forward pass per token, 1/N means N streams
advanced together. On this CPU batching gains little throughput (see docs/performance.md); steps
per token is the hardware-independent proof.

One stream through the server against raw `mlx_lm.stream_generate` (in a process of its own,
see RawDecoder) is measured in --pairs back-to-back pairs, alternating which runs first, while
nothing else runs on the server: the median ratio and its spread (a shared machine's load
drifts within a run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from tests.harness.tinymodels import QWEN3_25M
from tests.server_helpers import Daemon, build_chat_model, free_port, write_manifest

from benchmarks.report import header as report_header
from benchmarks.report import write as write_report
from benchmarks.server_concurrency import (
    LONG_PROMPT,
    RawDecoder,
    paired_overhead,
    peer_process,
    stream_chat,
)

CONCURRENCY = (1, 2, 4, 8)


def concurrent_streams(url: str, model: str, n: int, tokens: int, tag: str) -> dict[str, Any]:
    """`n` streams started together; their aggregate decode rate and per-stream rates."""
    spans: list[tuple[float, float, int]] = []
    errors: list[str] = []

    def run(i: int) -> None:
        started = time.perf_counter()
        try:
            result = stream_chat(url, model, LONG_PROMPT.format(i=f"{tag}{i}"), tokens)
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        first = started + result.ttft
        spans.append((first, first + result.first_to_last, result.tokens))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors or len(spans) != n:
        raise RuntimeError(f"{len(errors)} of {n} streams failed: {errors[:2]}")
    window = max(last for _, last, _ in spans) - min(first for first, _, _ in spans)
    total = sum(tokens for _, _, tokens in spans)
    return {"streams": n, "tokens": total, "window_s": round(window, 3), "tok_s": total / window}


def engine_counters(url: str) -> dict[str, int]:
    batch = httpx.get(f"{url}/api/status", timeout=10, trust_env=False).json()["engine"]["batch"]
    return {"steps": int(batch["decode_steps"]), "tokens": int(batch["generated_tokens"])}


def measure_local_ai(url: str, tokens: int) -> list[dict[str, Any]]:
    stream_chat(url, "bench", LONG_PROMPT.format(i="warm"), 8)
    rows = []
    for n in CONCURRENCY:
        before = engine_counters(url)
        row = concurrent_streams(url, "bench", n, tokens, f"l{n}-")
        after = engine_counters(url)
        row["decode_steps"] = after["steps"] - before["steps"]
        row["steps_per_token"] = row["decode_steps"] / max(after["tokens"] - before["tokens"], 1)
        rows.append(row)
        print(f"local-ai  {n} streams: {row['tok_s']:6.1f} tok/s", file=sys.stderr)
    return rows


def measure_peer(model_dir: Path, tokens: int, workdir: Path) -> list[dict[str, Any]]:
    argv = [sys.executable, "-m", "mlx_lm.server", "--model", str(model_dir), "--port", "{port}"]
    with peer_process(argv, workdir, "mlx_lm_server", "/health", 120) as url:
        stream_chat(url, "default_model", LONG_PROMPT.format(i="warm"), 8)
        rows = []
        for n in CONCURRENCY:
            rows.append(concurrent_streams(url, "default_model", n, tokens, f"p{n}-"))
            print(f"mlx_lm    {n} streams: {rows[-1]['tok_s']:6.1f} tok/s", file=sys.stderr)
        return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks batch", description=__doc__)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--pairs", type=int, default=8, help="raw/server single-stream pairs")
    parser.add_argument("--no-peer", action="store_true", help="skip mlx_lm.server")
    parser.add_argument(
        "--single-only", action="store_true", help="only the single-stream pairs (no peer)"
    )
    parser.add_argument("--out", type=Path, help="JSON output (default: benchmarks/results/)")
    args = parser.parse_args(argv)

    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="local-ai-bench-batch-") as tmp:
        work = Path(tmp)
        model_dir = build_chat_model(work / "qwen3-25m", **QWEN3_25M)
        raw = RawDecoder(model_dir)
        port = free_port()
        manifest = write_manifest(
            work,
            port=port,
            models={"bench": model_dir},
            context=4096,
            server_extra='preload = ["bench"]',
            engine_extra=f"max_batch_size = {max(CONCURRENCY)}",
        )
        daemon = Daemon(home=work / "state", manifest=manifest, port=port)
        started = daemon.start()
        if started.returncode != 0:
            raw.close()
            print(started.stderr, file=sys.stderr)
            return 1
        try:
            stream_chat(daemon.url, "bench", LONG_PROMPT.format(i="warm"), 8)
            info = daemon.pidfile()
            single = paired_overhead(
                raw, daemon.url, "bench", args.tokens, args.pairs, [info["pid"], info["engine_pid"]]
            )
            ours = None if args.single_only else measure_local_ai(daemon.url, args.tokens)
        finally:
            daemon.cli("server", "stop")
            raw.close()
        skip_peer = args.no_peer or args.single_only
        peer = None if skip_peer else measure_peer(model_dir, args.tokens, work)

    header = report_header("batching")
    header["machine"]["load_average_start"] = load_at_start
    header["machine"]["load_average_end"] = header["machine"].pop("load_average")
    report: dict[str, Any] = {
        **header,
        "model": "qwen3 25.7M fp32 (tests.harness.tinymodels.QWEN3_25M), greedy",
        "tokens_per_stream": args.tokens,
        "single_stream": single,
        "local_ai": ours,
        "mlx_lm_server": peer,
        "local_ai_aggregate_over_one_stream": (
            {str(r["streams"]): r["tok_s"] / ours[0]["tok_s"] for r in ours} if ours else None
        ),
    }
    out = write_report(report, args.out)
    print_table(report)
    print(f"\nwrote {out}")
    return 0


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    if report["local_ai"]:
        title = f"batched decoding ({report['model']}, {report['tokens_per_stream']} tok)"
        table = Table(title=title)
        for name in ("streams", "local-ai tok/s", "x one", "steps/token", "mlx_lm.server tok/s"):
            table.add_column(name, justify="right")
        peer = {r["streams"]: r for r in report["mlx_lm_server"] or []}
        for row in report["local_ai"]:
            n = row["streams"]
            table.add_row(
                str(n),
                f"{row['tok_s']:.1f}",
                f"{report['local_ai_aggregate_over_one_stream'][str(n)]:.2f}",
                f"{row['steps_per_token']:.3f}",
                f"{peer[n]['tok_s']:.1f}" if n in peer else "-",
            )
        Console().print(table)
    single = report["single_stream"]
    low, high = single["server_over_raw_quartiles"]
    print(
        f"one stream, {len(single['pairs_tok_s'])} pairs: raw stream_generate "
        f"{single['raw_decode_tok_s']:.1f} tok/s, through the server "
        f"{single['server_decode_tok_s']:.1f}; server / raw median {single['server_over_raw']:.3f} "
        f"(quartiles {low:.3f}-{high:.3f}); CPU per token raw {single['raw_cpu_ms_per_token']:.1f} "
        f"ms, gateway + engine {single['server_cpu_ms_per_token']:.1f} ms"
    )
    for name, threads in single["thread_cpu_ms_per_token"].items():
        busiest = ", ".join(
            f"{t['ms']:.2f}{' (main)' if t['main'] else ''}"
            + (f" [{t['runqueue_wait_ms']:.1f}]" if "runqueue_wait_ms" in t else "")
            for t in threads[:6]
        )
        print(f"  CPU ms per token by thread [runqueue wait], {name}: {busiest}")
    start, end = report["machine"]["load_average_start"], report["machine"]["load_average_end"]
    print(f"load average (1 min) {start[0]:.2f} at start, {end[0]:.2f} at end")


if __name__ == "__main__":
    sys.exit(main())
