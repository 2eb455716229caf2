"""Generations: recorded atomically, numbered forever upwards, current can move back."""

from __future__ import annotations

import json

import pytest

from local_ai import settings
from local_ai.errors import ConfigError, NotFoundError
from local_ai.reconcile.generations import AliasTarget, Generations


def _target(path: str) -> AliasTarget:
    return AliasTarget(path=path, context=4096, max_output_tokens=512, source="org/m")


def test_record_list_and_rollback() -> None:
    gens = Generations(settings.paths().generations)
    assert gens.numbers() == [] and gens.current() is None
    first = gens.record(
        manifest_hash="m1",
        aliases={"coder": _target("/store/a")},
        default="coder",
        preload=("coder",),
        aliases_hash="h1",
    )
    second = gens.record(
        manifest_hash="m2",
        aliases={"coder": _target("/store/b")},
        default="coder",
        preload=(),
        aliases_hash="h2",
    )
    assert (first.number, second.number) == (1, 2)
    assert gens.current_number() == 2
    gens.set_current(1)
    current = gens.current()
    assert current is not None and current.aliases["coder"].path == "/store/a"
    doc = current.alias_map()
    assert doc["models"]["coder"]["path"] == "/store/a"
    assert doc["hash"] == "h1" and doc["preload"] == ["coder"]
    assert gens.referenced_paths() == {"/store/a", "/store/b"}


def test_keep_prunes_oldest_but_numbers_keep_growing() -> None:
    gens = Generations(settings.paths().generations)
    for i in range(5):
        gens.record(
            manifest_hash=f"m{i}", aliases={}, default=None, preload=(), aliases_hash="", keep=3
        )
    assert gens.numbers() == [3, 4, 5]
    assert (
        gens.record(
            manifest_hash="x", aliases={}, default=None, preload=(), aliases_hash="", keep=3
        ).number
        == 6
    )


def test_missing_and_corrupt_generations() -> None:
    gens = Generations(settings.paths().generations)
    with pytest.raises(NotFoundError):
        gens.set_current(7)
    gens.record(manifest_hash="m", aliases={}, default=None, preload=(), aliases_hash="")
    path = settings.paths().generations / "000001.json"
    path.write_text(json.dumps({"number": 1}))
    with pytest.raises(ConfigError) as info:
        gens.load(1)
    assert info.value.path == path
