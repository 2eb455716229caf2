"""What every benchmark records next to its figures, and where it writes them."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def header(name: str) -> dict[str, Any]:
    """The opening fields of a report: which benchmark, when, and on what machine."""
    return {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),  # other work on the machine skews every figure
        },
    }


def write(report: dict[str, Any], out: Path | None = None) -> Path:
    """Write `report` as JSON to `out`, or to results/<benchmark>-<time>.json; return the path."""
    path = out or RESULTS / f"{report['benchmark']}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path
