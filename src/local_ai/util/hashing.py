"""Canonical hashes of JSON-shaped data: the same value gives the same hash in every process."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _canonical(value: Any) -> Any:
    # A set's iteration order follows string hashes, which differ per process.
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def stable_hash(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=_canonical)
    return hashlib.sha256(canonical.encode()).hexdigest()
