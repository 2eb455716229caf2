"""Run a benchmark by name: `uv run python -m benchmarks server [options]`."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "server": "benchmarks.server_concurrency",
    "plan": "benchmarks.plan_apply",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        names = ", ".join(sorted(BENCHMARKS))
        sys.stderr.write(f"usage: python -m benchmarks <{names}> [options]\n")
        return 64
    module = importlib.import_module(BENCHMARKS[argv[0]])
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
