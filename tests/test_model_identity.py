"""Identities the plan stores (observed fingerprints) must be the same in every process."""

from __future__ import annotations

import os
import subprocess
import sys

CODE = """
from local_ai.util.hashing import stable_hash
print(stable_hash({"digests": frozenset({"a1", "b2", "c3", "d4", "e5", "f6"}), "n": 1}))
"""


def test_stable_hash_of_sets_does_not_depend_on_the_process() -> None:
    hashes = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True
        )
        hashes.add(done.stdout.strip())
    assert len(hashes) == 1, hashes
