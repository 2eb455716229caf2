"""Engine recovery benchmark: how long after a kill -9 of the engine worker the server serves
again, measured in one run.

    uv run python -m benchmarks recovery    # table on stdout + JSON in benchmarks/results/
    uv run python -m benchmarks recovery --rounds 5

Starts `local-ai server start` with the tiny qwen3 test model preloaded, then, idle and while
streams are running (`--streams`, 2 by default), sends SIGKILL to the engine (once it has run
long enough to count as stable and its warm standby is ready) and measures:

1. kill → the gateway reports a new engine ready (`/api/status`: a new engine pid, state ready);
2. kill → the first chat completion that succeeds (a client retrying every 20 ms, as a client
   that got 503 would);
3. whether `/health` answered throughout (the gateway never goes away);
4. the same with the standby killed first: the engine starts from nothing (the cold path, as
   for a second crash before the next standby is warm).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from tests.server_helpers import Daemon, build_chat_model, free_port, wait_for, write_manifest

from benchmarks.report import header as report_header
from benchmarks.report import write as write_report
from local_ai.server.gateway.supervisor import STABLE_AFTER_S

RETRY_S = 0.02
GIVE_UP_S = 60.0


class Load:
    """`n` long streams that restart as soon as they end (the kill cuts them)."""

    def __init__(self, url: str, n: int) -> None:
        self.url = url
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 4000,
            "stream": True,
        }
        with httpx.Client(base_url=self.url, timeout=60, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    with client.stream("POST", "/v1/chat/completions", json=body) as response:
                        for _ in response.iter_lines():
                            if self._stop.is_set():
                                return
                except httpx.HTTPError:
                    pass
                time.sleep(RETRY_S)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


def engine(client: httpx.Client) -> dict[str, Any]:
    return dict(client.get("/api/status").json()["engine"])


def settled(state: dict[str, Any]) -> bool:
    return bool(state.get("standby_pid")) and (state.get("uptime_s") or 0) > STABLE_AFTER_S + 0.5


def kill_standby(pid: int) -> None:
    """Kill the warm standby, so the next engine starts from nothing (the cold path)."""
    import psutil

    standby = psutil.Process(pid)
    standby.kill()
    standby.wait(10)


def one_kill(client: httpx.Client, *, cold: bool = False) -> dict[str, Any]:
    before = engine(client)
    if cold:
        kill_standby(before["standby_pid"])
        wait_for(lambda: engine(client)["standby_pid"] is None, 5)
    got: dict[str, float] = {}
    errors = [0]

    def watch_ready() -> None:
        # Its own client: the completion below blocks while the gateway waits for the engine.
        with httpx.Client(base_url=str(client.base_url), timeout=10, trust_env=False) as own:
            while time.perf_counter() - killed < GIVE_UP_S:
                try:
                    if own.get("/health").status_code not in (200, 503):
                        errors[0] += 1
                    now = engine(own)
                    if now["state"] == "ready" and now["pid"] not in (None, before["pid"]):
                        got["ready_s"] = time.perf_counter() - killed
                        return
                except httpx.HTTPError:
                    errors[0] += 1
                time.sleep(RETRY_S)

    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    os.kill(before["pid"], signal.SIGKILL)
    killed = time.perf_counter()
    watcher = threading.Thread(target=watch_ready, daemon=True)
    watcher.start()
    while time.perf_counter() - killed < GIVE_UP_S:
        try:
            answer = client.post("/v1/chat/completions", json=body, timeout=GIVE_UP_S)
            if answer.status_code == 200:
                got["first_completion_s"] = time.perf_counter() - killed
                break
        except httpx.HTTPError:
            errors[0] += 1
        time.sleep(RETRY_S)
    watcher.join(GIVE_UP_S)
    return {
        "ready_s": round(got["ready_s"], 3) if "ready_s" in got else None,
        "first_completion_s": (
            round(got["first_completion_s"], 3) if "first_completion_s" in got else None
        ),
        "gateway_errors": errors[0],
        "standby_was_warm": not cold and bool(before.get("standby_pid")),
    }


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"samples": samples}
    for key in ("ready_s", "first_completion_s"):
        values = [s[key] for s in samples if s[key] is not None]
        out[f"{key}_median"] = round(statistics.median(values), 3) if values else None
        out[f"{key}_max"] = round(max(values), 3) if values else None
    out["gateway_errors"] = sum(s["gateway_errors"] for s in samples)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks recovery", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="kills per condition")
    parser.add_argument("--streams", type=int, default=2, help="streams running under load")
    parser.add_argument("--out", type=Path, help="JSON output (default: benchmarks/results/)")
    parser.add_argument("--workdir", type=Path, help="keep the model, state and logs here")
    args = parser.parse_args(argv)

    load_at_start = os.getloadavg()
    standby_memory: list[int] = []
    with tempfile.TemporaryDirectory(prefix="local-ai-bench-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_dir = build_chat_model(work / "tiny")
        port = free_port()
        manifest = write_manifest(
            work, port=port, models={"tiny": model_dir}, server_extra='preload = ["tiny"]'
        )
        daemon = Daemon(home=work / "state", manifest=manifest, port=port)
        started = daemon.start()
        if started.returncode != 0:
            print(started.stderr, file=sys.stderr)
            return 1
        results: dict[str, Any] = {}
        try:
            with httpx.Client(base_url=daemon.url, timeout=10, trust_env=False) as client:
                for condition in ("idle", "under_load", "cold"):
                    samples = []
                    for _ in range(args.rounds):
                        # One kill at a time, as in real life: the previous engine ran long
                        # enough to count as stable and the next standby is warm.
                        wait_for(lambda: settled(engine(client)), 60)
                        if engine(client).get("standby_memory_bytes"):
                            standby_memory.append(engine(client)["standby_memory_bytes"])
                        load = Load(daemon.url, args.streams) if condition != "idle" else None
                        if load is not None:
                            wait_for(lambda: bool(engine(client).get("active_generations")), 30)
                        try:
                            samples.append(one_kill(client, cold=condition == "cold"))
                        finally:
                            if load is not None:
                                load.stop()
                        print(f"{condition}: {samples[-1]}", file=sys.stderr)
                    results[condition] = summarise(samples)
        finally:
            daemon.cli("server", "stop")
            daemon.kill()

    report = {
        **report_header("engine_recovery"),
        "model": "qwen3 tiny (tests.server_helpers.build_chat_model), preloaded",
        "rounds": args.rounds,
        "streams_under_load": args.streams,
        "standby_memory_bytes_median": (
            int(statistics.median(standby_memory)) if standby_memory else None
        ),
        **results,
    }
    # Other work on the machine skews every figure: 1/5/15-minute averages, before and after.
    machine = report["machine"]
    machine["load_average_start"] = load_at_start
    machine["load_average_end"] = machine.pop("load_average")
    out = write_report(report, args.out)
    print_table(report)
    print(f"\nwrote {out}")
    return 0


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"engine recovery after kill -9 ({report['rounds']} kills each)")
    table.add_column("measure")
    table.add_column("idle", justify="right")
    table.add_column(f"{report['streams_under_load']} streams running", justify="right")
    table.add_column("idle, no standby", justify="right")

    def cell(condition: str, key: str) -> str:
        value = report[condition].get(key)
        return f"{value:.2f}" if isinstance(value, int | float) else "-"

    for key, label in (
        ("ready_s_median", "kill → engine ready, median (s)"),
        ("ready_s_max", "kill → engine ready, max (s)"),
        ("first_completion_s_median", "kill → first completion, median (s)"),
        ("first_completion_s_max", "kill → first completion, max (s)"),
    ):
        table.add_row(label, cell("idle", key), cell("under_load", key), cell("cold", key))
    table.add_row(
        "gateway errors (no answer)",
        *(str(report[c]["gateway_errors"]) for c in ("idle", "under_load", "cold")),
    )
    Console().print(table)
    memory = report.get("standby_memory_bytes_median")
    if memory:
        print(f"warm standby's resident memory (median): {memory / 1e6:.0f} MB")
    machine = report["machine"]
    start, end = machine["load_average_start"], machine["load_average_end"]
    cpus = machine["cpus"]
    print(f"load average (1 min) at start {start[0]:.2f}, at end {end[0]:.2f} on {cpus} CPUs")


if __name__ == "__main__":
    sys.exit(main())
