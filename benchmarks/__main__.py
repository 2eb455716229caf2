"""Run one benchmark by name (`uv run python -m benchmarks server [options]`), or all of them
with their defaults (`uv run python -m benchmarks all`); each prints a table and writes JSON to
benchmarks/results/ (`cluster`: docs/benchmarks/). docs/performance.md records the latest
figures."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "server": "benchmarks.server_concurrency",
    "batch": "benchmarks.batching",
    "plan": "benchmarks.plan_apply",
    "prefix": "benchmarks.prefix_cache",
    "fetch": "benchmarks.fetch",
    "convert": "benchmarks.convert_throughput",
    "recovery": "benchmarks.engine_recovery",
    "cluster": "benchmarks.cluster",
}


def main(argv: list[str]) -> int:
    if argv[:1] == ["all"]:
        failed = [name for name in BENCHMARKS if main([name]) != 0]
        if failed:
            sys.stderr.write(f"failed: {', '.join(failed)}\n")
        return 1 if failed else 0
    if not argv or argv[0] not in BENCHMARKS:
        names = ", ".join(sorted(BENCHMARKS))
        sys.stderr.write(f"usage: python -m benchmarks <all|{names}> [options]\n")
        return 64
    module = importlib.import_module(BENCHMARKS[argv[0]])
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
