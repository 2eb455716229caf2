"""Server benchmark: head-of-line blocking and per-token overhead, measured in one run.

    uv run python -m benchmarks server            # table on stdout + JSON in benchmarks/results/
    uv run python -m benchmarks server --no-omni  # skip the MLX Omni Server baseline

Uses the ~25.7M-parameter fp32 qwen3 from the test harness (end tokens suppressed so every stream
runs to max_tokens, greedy decoding) so per-token costs are visible on a CPU. Measures:

1. raw `mlx_lm.stream_generate` decode rate (in a process of its own session);
2. the same model through `local-ai server start` (gateway → engine over a Unix socket, SSE):
   decode rate of one stream and the per-token overhead against raw (raw and served streams
   measured back to back in pairs, so both see the same machine load);
3. time to first token (TTFT) of a short request alone, and while a long stream runs;
4. aggregate decode rate of two concurrent streams;
5. the same TTFT pair against MLX Omni Server's own routers (the baseline we replace).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tests.harness.tinymodels import QWEN3_25M
from tests.server_helpers import Daemon, build_chat_model, free_port, wait_for, write_manifest

from benchmarks.report import header as report_header
from benchmarks.report import write as write_report

SHORT_PROMPT = "Request {i}: write one short sentence about the weather in Paris."
LONG_PROMPT = "Request {i}: write a long story about a local model server."


@dataclass
class StreamResult:
    ttft: float
    tokens: int
    seconds: float
    first_to_last: float

    @property
    def decode_rate(self) -> float:
        return (self.tokens - 1) / self.first_to_last if self.first_to_last > 0 else 0.0


def stream_chat(
    url: str, model: str, prompt: str, max_tokens: int, headers: dict[str, str] | None = None
) -> StreamResult:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = last = 0.0
    tokens = 0
    usage_tokens: int | None = None
    with (
        httpx.Client(timeout=600, trust_env=False) as client,
        client.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=headers or {}
        ) as response,
    ):
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            choices = chunk.get("choices") or []
            if not choices:
                continue
            now = time.perf_counter()
            if choices[0].get("delta", {}).get("content"):
                tokens += 1
                if not first:
                    first = now
            if first and (
                choices[0].get("delta", {}).get("content") or choices[0].get("finish_reason")
            ):
                last = now
    ended = time.perf_counter()
    # Tokens whose text is empty (a partial UTF-8 character, a held-back marker) send no content
    # chunk: count generated tokens from usage when the server reports it.
    return StreamResult(
        ttft=first - started if first else float("nan"),
        tokens=usage_tokens or tokens,
        seconds=ended - started,
        first_to_last=last - first,
    )


@dataclass
class Measurements:
    ttft_alone: list[float] = field(default_factory=list)
    ttft_during: list[float] = field(default_factory=list)
    single_rate: float = 0.0
    aggregate_rate_2: float = 0.0

    def summary(self) -> dict[str, Any]:
        alone = statistics.median(self.ttft_alone) if self.ttft_alone else float("nan")
        during = statistics.median(self.ttft_during) if self.ttft_during else float("nan")
        return {
            "ttft_alone_s": alone,
            "ttft_during_long_stream_s": during,
            "ttft_ratio": during / alone if alone else float("nan"),
            "single_stream_tok_s": self.single_rate,
            "two_streams_aggregate_tok_s": self.aggregate_rate_2,
            "ttft_alone_samples": self.ttft_alone,
            "ttft_during_samples": self.ttft_during,
        }


def measure_server(
    url: str,
    model: str,
    *,
    long_tokens: int,
    rounds: int,
    headers: dict[str, str] | None = None,
    aggregate: bool = True,
) -> Measurements:
    m = Measurements()
    stream_chat(url, model, SHORT_PROMPT.format(i="warm"), 4, headers)  # load + warm up
    stream_chat(url, model, LONG_PROMPT.format(i="warm"), 16, headers)
    single = stream_chat(url, model, LONG_PROMPT.format(i="single"), long_tokens, headers)
    m.single_rate = single.decode_rate
    for i in range(rounds):
        m.ttft_alone.append(
            stream_chat(url, model, SHORT_PROMPT.format(i=f"a{i}"), 4, headers).ttft
        )
    for i in range(rounds):
        prompt = LONG_PROMPT.format(i=f"l{i}")
        thread = threading.Thread(
            target=stream_chat, args=(url, model, prompt, long_tokens, headers)
        )
        thread.start()
        # Send the short request once the long one is surely decoding.
        time.sleep(max(0.5, 20 / max(m.single_rate, 1.0)))
        short = stream_chat(url, model, SHORT_PROMPT.format(i=f"d{i}"), 4, headers)
        m.ttft_during.append(short.ttft)
        thread.join()
    if aggregate:
        results: list[StreamResult] = []

        def run(i: int) -> None:
            results.append(
                stream_chat(url, model, LONG_PROMPT.format(i=f"g{i}"), long_tokens, headers)
            )

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        m.aggregate_rate_2 = sum(r.tokens for r in results) / elapsed
    return m


class RawDecoder:
    """`mlx_lm.stream_generate` on the same model: the rate to beat.

    It runs in a process of its own session, as the server's engine does: Linux's autogroup
    scheduler shares the CPU between sessions, so under other load a decoder in the
    benchmark's session would get a smaller share than the server and lose by up to 2x."""

    def __init__(self, model_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.server_concurrency", "--raw-worker", str(model_dir)],
            cwd=Path(__file__).resolve().parents[1],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.rate(16)  # loads the model and warms up

    def rate(self, tokens: int) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{tokens}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the raw decoder process exited ({self.proc.wait()})")
        return float(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _raw_worker(model_dir: str) -> int:
    """The RawDecoder process: for each line (a token count) on stdin, one stream_generate
    run; prints its decode rate."""
    from mlx_lm import load
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(model_dir)[:2]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": LONG_PROMPT.format(i="raw")}], add_generation_prompt=True
    )
    sampler = make_sampler(temp=0.0)
    for line in sys.stdin:
        times = []
        for _ in stream_generate(model, tokenizer, prompt, max_tokens=int(line), sampler=sampler):
            times.append(time.perf_counter())
        rate = (len(times) - 1) / (times[-1] - times[0])
        print(rate, flush=True)
    return 0


class ThreadCpu:
    """CPU seconds per thread of named processes, summed over the intervals measured: where a
    token's CPU goes (MLX's compute thread, the Python decode loop, request threads, loops).
    On Linux also each thread's time runnable but waiting for a CPU (/proc schedstat): how
    much the machine's other load held it back."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.seconds: dict[tuple[str, int], float] = {}
        self.waited: dict[tuple[str, int], float] = {}

    def snapshot(self) -> dict[tuple[str, int], tuple[float, float]]:
        return {
            (name, t.id): (t.user_time + t.system_time, _runqueue_wait(proc.pid, t.id))
            for name, proc in self.procs.items()
            for t in proc.threads()
        }

    def add(self, before: dict[tuple[str, int], tuple[float, float]]) -> float:
        """Adds what each thread spent since `before`; returns the CPU total."""
        total = 0.0
        for key, (cpu, wait) in self.snapshot().items():
            cpu_before, wait_before = before.get(key, (0.0, 0.0))
            self.seconds[key] = self.seconds.get(key, 0.0) + cpu - cpu_before
            self.waited[key] = self.waited.get(key, 0.0) + wait - wait_before
            total += cpu - cpu_before
        return total

    def per_token(self, tokens: int) -> dict[str, list[dict[str, Any]]]:
        """Per process, its threads' ms per token, busiest first ("main": the first thread)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for (name, tid), seconds in sorted(self.seconds.items(), key=lambda kv: -kv[1]):
            ms = 1000 * seconds / tokens
            if ms >= 0.01:
                thread = {
                    "main": tid == self.procs[name].pid,
                    "ms": round(ms, 3),
                    "runqueue_wait_ms": round(1000 * self.waited[(name, tid)] / tokens, 3),
                }
                out.setdefault(name, []).append(thread)
        return out


def _runqueue_wait(pid: int, tid: int) -> float:
    """Seconds thread `tid` has waited runnable for a CPU (0 without Linux's schedstat)."""
    try:
        fields = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
    except OSError:
        return 0.0
    return int(fields[1]) / 1e9


def paired_overhead(
    raw: RawDecoder, url: str, model: str, tokens: int, rounds: int, server_pids: list[int]
) -> dict[str, Any]:
    """Raw and server decode rates measured back to back, `rounds` times, alternating which goes
    first (A/B, B/A, ...) so a drift in machine load favours neither; the median ratio of the
    pairs and its spread. Also CPU per generated token, raw against the server's processes
    (gateway + engine; a measure of the server path's cost that other load skews less), and per
    thread, with this process's (the client's) CPU per served token next to them."""
    gateway, engine = server_pids
    raw_threads = ThreadCpu({"raw": raw.proc.pid})
    server_threads = ThreadCpu({"gateway": gateway, "engine": engine})
    client_s = 0.0

    def measure_raw() -> tuple[float, float]:
        before = raw_threads.snapshot()
        rate = raw.rate(tokens)
        return rate, raw_threads.add(before) / tokens

    def measure_served(i: int) -> tuple[float, float]:
        nonlocal client_s
        before, started = server_threads.snapshot(), time.process_time()
        rate = stream_chat(url, model, LONG_PROMPT.format(i=f"p{i}"), tokens).decode_rate
        client_s += time.process_time() - started
        return rate, server_threads.add(before) / tokens  # every stream runs to `tokens`

    pairs = []
    cpu_raw, cpu_server = [], []
    for i in range(rounds):
        if i % 2 == 0:
            (raw_rate, raw_cpu), (served, served_cpu) = measure_raw(), measure_served(i)
        else:
            (served, served_cpu), (raw_rate, raw_cpu) = measure_served(i), measure_raw()
        cpu_raw.append(raw_cpu)
        cpu_server.append(served_cpu)
        pairs.append((raw_rate, served))
        print(f"pair {i + 1}: raw {raw_rate:.1f}, server {served:.1f} tok/s", file=sys.stderr)
    overheads = [1000 * (1 / served - 1 / raw_rate) for raw_rate, served in pairs]
    ratios = sorted(s / r for r, s in pairs)
    quartiles = (
        statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    )
    all_tokens = tokens * rounds
    return {
        "raw_decode_tok_s": statistics.median(r for r, _ in pairs),
        "server_decode_tok_s": statistics.median(s for _, s in pairs),
        "per_token_overhead_ms": statistics.median(overheads),
        "server_over_raw": statistics.median(ratios),
        "server_over_raw_quartiles": [quartiles[0], quartiles[2]],
        "server_over_raw_range": [ratios[0], ratios[-1]],
        "pairs_tok_s": pairs,
        "raw_cpu_ms_per_token": 1000 * statistics.median(cpu_raw),
        "server_cpu_ms_per_token": 1000 * statistics.median(cpu_server),
        "cpu_overhead_ms_per_token": 1000
        * statistics.median(s - r for r, s in zip(cpu_raw, cpu_server, strict=True)),
        "thread_cpu_ms_per_token": {
            **raw_threads.per_token(all_tokens),
            **server_threads.per_token(all_tokens),
            "client": [{"main": True, "ms": round(1000 * client_s / all_tokens, 3)}],
        },
    }


OMNI_APP = """
import sys, uvicorn
from fastapi import FastAPI
from mlx_omni_server.chat.openai.router import router
app = FastAPI()
app.include_router(router)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


@contextlib.contextmanager
def peer_process(
    argv: list[str], workdir: Path, name: str, ready_path: str, within: float
) -> Iterator[str]:
    """A peer server on a free loopback port (its argv gets the port by `{port}`), logging to
    workdir/<name>.log; yields its URL once `ready_path` answers 2xx, stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (workdir / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(
            [arg.format(port=port) for arg in argv],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        try:

            def up() -> bool:
                try:
                    return httpx.get(url + ready_path, timeout=1, trust_env=False).is_success
                except httpx.HTTPError:
                    return False

            if not wait_for(up, within, 0.2):
                raise RuntimeError(f"{name} did not start; see {name}.log")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def measure_omni(
    model_dir: Path, *, long_tokens: int, rounds: int, workdir: Path
) -> dict[str, Any]:
    """The baseline: Omni's own OpenAI router in a FastAPI app, served by uvicorn."""
    argv = [sys.executable, "-c", OMNI_APP, "{port}"]
    with peer_process(argv, workdir, "omni", "/docs", 60) as url:
        return measure_server(url, str(model_dir), long_tokens=long_tokens, rounds=rounds).summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks server", description=__doc__)
    parser.add_argument("--tokens", type=int, default=200, help="tokens in a long stream")
    parser.add_argument("--rounds", type=int, default=3, help="TTFT samples per condition")
    parser.add_argument("--no-omni", action="store_true", help="skip the Omni baseline")
    parser.add_argument("--out", type=Path, help="JSON output (default: benchmarks/results/)")
    parser.add_argument("--model-dir", type=Path, help="reuse/build the 25M model here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="local-ai-bench-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or work / "qwen3-25m"
        build_chat_model(model_dir, **QWEN3_25M)
        print(f"model: {model_dir} (qwen3 ~25.7M params, fp32)", file=sys.stderr)

        decoder = RawDecoder(model_dir)
        print(f"raw mlx_lm decode: {decoder.rate(args.tokens):.1f} tok/s", file=sys.stderr)

        port = free_port()
        manifest = write_manifest(
            work,
            port=port,
            models={"bench": model_dir},
            context=8192,
            server_extra='preload = ["bench"]',
        )
        daemon = Daemon(home=work / "state", manifest=manifest, port=port)
        started = daemon.start()
        if started.returncode != 0:
            print(started.stderr, file=sys.stderr)
            return 1
        try:
            ours = measure_server(daemon.url, "bench", long_tokens=args.tokens, rounds=args.rounds)
            info = daemon.pidfile()
            paired = paired_overhead(
                decoder,
                daemon.url,
                "bench",
                args.tokens,
                args.rounds,
                [info["pid"], info["engine_pid"]],
            )
        finally:
            daemon.cli("server", "stop")
            decoder.close()
        raw = {"raw_decode_tok_s": paired["raw_decode_tok_s"], "pairs_tok_s": paired["pairs_tok_s"]}
        local = ours.summary()
        local["per_token_overhead_ms"] = paired["per_token_overhead_ms"]
        local["server_over_raw"] = paired["server_over_raw"]
        local["paired_server_decode_tok_s"] = paired["server_decode_tok_s"]
        for key in ("raw_cpu_ms_per_token", "server_cpu_ms_per_token", "cpu_overhead_ms_per_token"):
            local[key] = paired[key]
        omni = None
        if not args.no_omni:
            print("measuring the MLX Omni Server baseline…", file=sys.stderr)
            omni = measure_omni(
                model_dir, long_tokens=args.tokens, rounds=args.rounds, workdir=work
            )

    report = {
        **report_header("server_concurrency"),
        "model": "qwen3 25.7M fp32 (tests.harness.tinymodels.QWEN3_25M), greedy",
        "long_stream_tokens": args.tokens,
        "rounds": args.rounds,
        "raw": raw,
        "local_ai": local,
        "omni_baseline": omni,
    }
    out = write_report(report, args.out)
    print_table(report)
    print(f"\nwrote {out}")
    return 0


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    raw = report["raw"]
    local = report["local_ai"]
    omni = report["omni_baseline"] or {}
    table = Table(
        title=f"server benchmark ({report['model']}, {report['long_stream_tokens']}-token streams)"
    )
    table.add_column("measure")
    table.add_column("local-ai", justify="right")
    table.add_column("Omni routers", justify="right")

    def cell(data: dict[str, Any], key: str, fmt: str) -> str:
        value = data.get(key)
        return format(value, fmt) if isinstance(value, int | float) else "-"

    table.add_row(
        "raw mlx_lm.stream_generate decode (tok/s)", format(raw["raw_decode_tok_s"], ".1f"), ""
    )
    table.add_row(
        "one stream through the server (tok/s)",
        cell(local, "single_stream_tok_s", ".1f"),
        cell(omni, "single_stream_tok_s", ".1f"),
    )
    table.add_row("server / raw decode, paired", cell(local, "server_over_raw", ".3f"), "")
    table.add_row("per-token overhead vs raw (ms)", cell(local, "per_token_overhead_ms", ".2f"), "")
    table.add_row(
        "CPU per token: raw / server processes (ms)",
        f"{cell(local, 'raw_cpu_ms_per_token', '.1f')} / "
        f"{cell(local, 'server_cpu_ms_per_token', '.1f')}",
        "",
    )
    table.add_row(
        "CPU overhead per token (ms)", cell(local, "cpu_overhead_ms_per_token", ".2f"), ""
    )
    table.add_row(
        "TTFT alone (s)", cell(local, "ttft_alone_s", ".3f"), cell(omni, "ttft_alone_s", ".3f")
    )
    table.add_row(
        "TTFT during a long stream (s)",
        cell(local, "ttft_during_long_stream_s", ".3f"),
        cell(omni, "ttft_during_long_stream_s", ".3f"),
    )
    table.add_row(
        "TTFT ratio (target ≤ 2)", cell(local, "ttft_ratio", ".2f"), cell(omni, "ttft_ratio", ".2f")
    )
    table.add_row(
        "two streams, aggregate (tok/s)",
        cell(local, "two_streams_aggregate_tok_s", ".1f"),
        cell(omni, "two_streams_aggregate_tok_s", ".1f"),
    )
    Console().print(table)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--raw-worker"]:
        sys.exit(_raw_worker(sys.argv[2]))
    sys.exit(main())
