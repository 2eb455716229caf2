"""Fetch benchmark: local-ai's resolve + fetch against plain `huggingface_hub.snapshot_download`
of the same repo from the same fake hub, and the bytes fetched again after a fetch killed with
SIGKILL, measured in one run.

    uv run python -m benchmarks fetch                     # table on stdout + JSON in results/
    uv run python -m benchmarks fetch --shards 4 --shard-mb 64 --rounds 5

The hub (tests/harness/fakehub.py, loopback HTTP, files streamed from disk) runs in this process;
every fetch runs in a fresh Python subprocess with its own empty HF cache, so neither side shares
a GIL with the hub and nothing is cached between rounds. The two clients alternate to spread
machine noise. local-ai's time includes resolution (one model_info call) and sha256 verification
of every file, which snapshot_download does not do.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.harness.fakehub import FakeHub, running_hub
from tests.server_helpers import wait_for

from benchmarks.report import header as report_header
from benchmarks.report import write as write_report

REPO = "bench-org/bench-model-mlx"
MIB = 1024 * 1024

WORKER = """
import json, sys, time
mode, repo = sys.argv[1], sys.argv[2]
# Import the client first on both sides: only the fetch is timed.
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
if mode == "snapshot_download":
    imported = time.perf_counter()
    snapshot_download(repo)
    resolved = imported
else:
    from local_ai.hub.fetch import fetch
    from local_ai.hub.resolve import resolve
    from local_ai.manifest.models import ModelSpec
    imported = time.perf_counter()
    source = resolve("bench", ModelSpec(repo=repo))
    resolved = time.perf_counter()
    fetch(source)
done = time.perf_counter()
print(json.dumps({"seconds": done - imported, "resolve_seconds": resolved - imported}))
"""


def build_repo(directory: Path, shards: int, shard_bytes: int) -> dict[str, Path]:
    """An MLX-looking repo: configs, a tokenizer and `shards` safetensors of random bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    small = {
        "config.json": json.dumps(
            {"model_type": "qwen3", "quantization": {"group_size": 64, "bits": 4}}
        ),
        "tokenizer.json": json.dumps({"model": {"type": "BPE"}}),
        "tokenizer_config.json": json.dumps({"eos_token": "<|im_end|>"}),
    }
    for name, text in small.items():
        (directory / name).write_text(text)
        files[name] = directory / name
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        header = json.dumps(
            {"w": {"dtype": "U8", "shape": [shard_bytes], "data_offsets": [0, shard_bytes]}}
        ).encode()
        with (directory / name).open("wb") as out:
            out.write(len(header).to_bytes(8, "little") + header)
            for _ in range(0, shard_bytes, MIB):
                out.write(os.urandom(min(MIB, shard_bytes)))
            out.truncate(8 + len(header) + shard_bytes)
        files[name] = directory / name
    return files


def worker_env(hub: FakeHub, cache: Path, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(cache.parent),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "LOCAL_AI_HOME": str(home),
    }


def run_worker(mode: str, hub: FakeHub, work: Path, tag: str) -> dict[str, Any]:
    cache, home = work / tag / "hf" / "hub", work / tag / "home"
    hub.clear_requests()
    result = subprocess.run(
        [sys.executable, "-c", WORKER, mode, REPO],
        capture_output=True,
        text=True,
        env=worker_env(hub, cache, home),
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{result.stderr}")
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    data["bytes"] = hub.file_bytes_sent(REPO)
    return data


def measure_throughput(hub: FakeHub, work: Path, rounds: int, total: int) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {"snapshot_download": [], "local_ai": []}
    for i in range(rounds):
        order = (
            ("snapshot_download", "local_ai") if i % 2 == 0 else ("local_ai", "snapshot_download")
        )
        for mode in order:
            sample = run_worker(mode, hub, work, f"{mode}-{i}")
            samples[mode].append(sample)
            print(
                f"  round {i + 1} {mode}: {sample['seconds']:.2f} s, "
                f"{sample['bytes'] / MIB:.1f} MiB transferred",
                file=sys.stderr,
            )
    out: dict[str, Any] = {}
    for mode, runs in samples.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        out[mode] = {
            "median_seconds": seconds,
            "median_mib_per_s": total / MIB / seconds,
            "resolve_seconds": statistics.median(r["resolve_seconds"] for r in runs),
            "bytes_transferred": [r["bytes"] for r in runs],
            "seconds": [r["seconds"] for r in runs],
        }
    out["local_ai_over_snapshot_download"] = (
        out["local_ai"]["median_mib_per_s"] / out["snapshot_download"]["median_mib_per_s"]
    )
    return out


def hashing_seconds(files: dict[str, Path]) -> float:
    """What verification alone costs: sha256 of every file, one thread, from the page cache."""
    from local_ai.hub.verify import hash_file

    started = time.perf_counter()
    for path in files.values():
        hash_file(path, git_oid=False)
    return time.perf_counter() - started


def measure_interrupted(
    hub: FakeHub, work: Path, files: dict[str, Path], total: int
) -> dict[str, Any]:
    """Kill -9 a local-ai fetch while the second half of the shards is half transferred, then
    rerun it: how many bytes went over the wire twice."""
    shards = sorted(n for n in files if n.endswith(".safetensors"))
    slow = shards[len(shards) // 2 :]
    for name in slow:  # each slow shard takes ~6 s; the others go at full speed
        size = files[name].stat().st_size
        hub.inject(
            "slow", path=name, methods=("GET",), bytes_per_second=max(1, size // 6), max_seconds=120
        )
    cache, home = work / "interrupted" / "hf" / "hub", work / "interrupted" / "home"
    env = worker_env(hub, cache, home)
    hub.clear_requests()
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, "local_ai", REPO],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def half_way() -> bool:
        sent = [hub.file_bytes_sent(REPO, name) for name in slow]
        halves = [files[name].stat().st_size // 2 for name in slow]
        return all(s >= h for s, h in zip(sent, halves, strict=True)) or proc.poll() is not None

    try:
        if not wait_for(half_way, 120, 0.05) or proc.poll() is not None:
            raise RuntimeError("the fetch ended before it could be interrupted")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    sent_before = hub.file_bytes_sent(REPO)
    snapshot = next((cache / f"models--{REPO.replace('/', '--')}" / "snapshots").iterdir())
    finished = {p.name for p in snapshot.iterdir()}
    finished_bytes = sum(files[n].stat().st_size for n in finished)
    leftovers = list(cache.rglob("*.incomplete"))
    hub.clear_faults()

    rerun = run_worker("local_ai", hub, work, "interrupted")
    sent_rerun = int(rerun["bytes"])
    return {
        "total_bytes": total,
        "bytes_before_kill": sent_before,
        "files_finished_before_kill": len(finished),
        "bytes_finished_before_kill": finished_bytes,
        "incomplete_files_left_by_kill": len(leftovers),
        "bytes_on_rerun": sent_rerun,
        "bytes_refetched": sent_before + sent_rerun - total,
        "finished_bytes_refetched": max(0, sent_rerun - (total - finished_bytes)),
        "rerun_seconds": rerun["seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks fetch", description=__doc__)
    parser.add_argument("--shards", type=int, default=4, help="safetensors shards in the repo")
    parser.add_argument("--shard-mb", type=int, default=64, help="MiB per shard")
    parser.add_argument("--rounds", type=int, default=5, help="fetches per client")
    parser.add_argument("--out", type=Path, help="JSON output (default: benchmarks/results/)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="local-ai-fetch-bench-") as tmp:
        work = Path(tmp)
        files = build_repo(work / "repo", args.shards, args.shard_mb * MIB)
        total = sum(p.stat().st_size for p in files.values())
        print(f"repo: {len(files)} files, {total / MIB:.1f} MiB", file=sys.stderr)
        with running_hub() as hub:
            hub.add_repo(REPO, dict(files), metadata={"library_name": "mlx", "tags": ["mlx"]})
            throughput = measure_throughput(hub, work, args.rounds, total)
            throughput["sha256_all_files_seconds"] = hashing_seconds(files)
            print("interrupted fetch (kill -9, rerun)…", file=sys.stderr)
            interrupted = measure_interrupted(hub, work, files, total)

    report = {
        **report_header("fetch"),
        "repo": {"files": len(files), "bytes": total, "shards": args.shards},
        "rounds": args.rounds,
        "throughput": throughput,
        "interrupted": interrupted,
    }
    out = write_report(report, args.out)
    print_table(report)
    print(f"\nwrote {out}")
    return 0


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = report["throughput"]
    i = report["interrupted"]
    mib = report["repo"]["bytes"] / MIB
    table = Table(title=f"fetch benchmark ({report['repo']['files']} files, {mib:.0f} MiB)")
    table.add_column("measure")
    table.add_column("local-ai", justify="right")
    table.add_column("snapshot_download", justify="right")
    table.add_row(
        "median time (s)",
        f"{t['local_ai']['median_seconds']:.2f}",
        f"{t['snapshot_download']['median_seconds']:.2f}",
    )
    table.add_row(
        "throughput (MiB/s)",
        f"{t['local_ai']['median_mib_per_s']:.1f}",
        f"{t['snapshot_download']['median_mib_per_s']:.1f}",
    )
    ratio = t["local_ai_over_snapshot_download"]
    table.add_row("local-ai / snapshot_download", f"{ratio:.2f}", "")
    table.add_row(
        "  sha256 of every file, one thread (s)", f"{t['sha256_all_files_seconds']:.2f}", ""
    )
    table.add_row(
        "after kill -9: bytes before the kill (MiB)", f"{i['bytes_before_kill'] / MIB:.1f}", ""
    )
    table.add_row("  finished files kept", str(i["files_finished_before_kill"]), "")
    table.add_row("  bytes on the rerun (MiB)", f"{i['bytes_on_rerun'] / MIB:.1f}", "")
    table.add_row("  bytes fetched twice (MiB)", f"{i['bytes_refetched'] / MIB:.1f}", "")
    table.add_row("  of finished files (bytes)", str(i["finished_bytes_refetched"]), "")
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
