"""GROUP and the rank line: the contract between the gateway, which starts and watches a
sharded alias's ranks (server/gateway/group.py), and every rank's engine (server/engine/group.py).
See docs/cluster.md.

Every rank is started with the same GROUP (JSON, never pickle); once loaded and past the barrier,
each prints one `local-ai-rank {"rank", "host", "pid"}` line on stdout; a rank that can no longer
trust the group writes `local-ai-rank-lost: <what>` on stderr before it exits.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

RANK_MARK = "local-ai-rank"
LOST_MARK = "local-ai-rank-lost"
PARALLEL = ("pipeline", "tensor")


@dataclass(frozen=True)
class GroupSpec:
    """GROUP of the contract with the gateway (docs/cluster.md): the same on every rank."""

    alias: str
    parallel: Literal["pipeline", "tensor"]
    hosts: list[str]
    model_paths: list[str]
    max_batch_size: int
    debug: bool = False

    @classmethod
    def parse(cls, raw: Any, where: str) -> GroupSpec:
        """Validated GROUP; ValueError naming `where` and the key otherwise."""
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: the group must be a JSON object")
        problems = []
        if not isinstance(raw.get("alias"), str) or not raw["alias"]:
            problems.append("alias must be a non-empty string")
        if raw.get("parallel") not in PARALLEL:
            problems.append(f"parallel must be one of {', '.join(PARALLEL)}")
        hosts, paths = raw.get("hosts"), raw.get("model_paths")
        for key, value in (("hosts", hosts), ("model_paths", paths)):
            if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
                problems.append(f"{key} must be a list of strings, one per rank")
        if isinstance(hosts, list) and isinstance(paths, list) and len(hosts) != len(paths):
            problems.append("hosts and model_paths must have one entry per rank")
        batch = raw.get("max_batch_size")
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            problems.append("max_batch_size must be a positive integer")
        unknown = set(raw) - {"alias", "parallel", "hosts", "model_paths", "max_batch_size"}
        unknown.discard("debug")
        if unknown:
            problems.append(f"unknown keys {', '.join(sorted(unknown))}")
        if problems:
            raise ValueError(f"{where}: " + "; ".join(problems))
        return cls(
            alias=raw["alias"],
            parallel=raw["parallel"],
            hosts=list(hosts),  # type: ignore[arg-type]
            model_paths=list(paths),  # type: ignore[arg-type]
            max_batch_size=batch,  # type: ignore[arg-type]
            debug=bool(raw.get("debug")),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rank_line(rank: int, host: str, pid: int) -> str:
    """The line a rank prints once it serves its share."""
    return f"{RANK_MARK} {json.dumps({'rank': rank, 'host': host, 'pid': pid})}\n"


def parse_rank_line(line: str) -> dict[str, Any] | None:
    """`local-ai-rank {"rank", "host", "pid"}` → that dict; None for any other line."""
    head, _, rest = line.strip().partition(" ")
    if head != RANK_MARK:
        return None
    try:
        doc = json.loads(rest)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), int) for k in ("rank", "pid")):
        return None
    return doc
