"""Generations: recorded atomically, numbered forever upwards, current can move back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from local_ai import settings
from local_ai.errors import ConfigError, NotFoundError
from local_ai.manifest.load import LoadedManifest
from local_ai.manifest.models import Manifest
from local_ai.reconcile.generations import Generations
from local_ai.reconcile.serving import map_to_serve
from local_ai.server.aliases import AliasEntry


def _target(path: str) -> AliasEntry:
    return AliasEntry(path=path, context=4096, max_output_tokens=512, source="org/m")


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
    assert gens.rolled_back_to() is None
    gens.set_current(1, rollback=True)
    assert gens.rolled_back_to() == 1
    current = gens.current()
    assert current is not None and current.aliases["coder"].path == "/store/a"
    served = current.alias_map()
    assert served.models["coder"] == _target("/store/a") and served.generation == 1
    assert served.hash == "h1" and served.preload == ["coder"]
    assert gens.referenced_paths() == {"/store/a", "/store/b"}
    # `current` left behind by an apply killed before its switch is no rollback.
    gens.set_current(1)
    assert gens.current_number() == 1 and gens.rolled_back_to() is None


def test_a_starting_server_serves_the_generation_in_service(tmp_path: Path) -> None:
    mlx_dir = tmp_path / "mlx"
    mlx_dir.mkdir()
    quantized = {"quantization": {"bits": 4, "group_size": 64}}
    (mlx_dir / "config.json").write_text(json.dumps(quantized))
    (mlx_dir / "model.safetensors").write_bytes(b"w")
    manifest = Manifest.model_validate(
        {
            "server": {"default_model": "b"},
            "models": {
                "a": {"path": "mlx", "context": 8192},
                "b": {"path": "relative-missing"},
                "conv": {"path": "mlx", "quantize": "q8"},
                "d": {"repo": "org/d"},
            },
        }
    )
    loaded = LoadedManifest(manifest=manifest, path=tmp_path / "local-ai.toml", text="")
    # Before any apply: path directories that need no conversion, as they are.
    served, skipped = map_to_serve(loaded)
    assert list(served.models) == ["a"] and served.default == "a" and served.hash is None
    assert served.models["a"].path == str(mlx_dir) and served.models["a"].quantization == "4bit"
    assert "does not exist" in skipped["b"] and "local-ai apply" in skipped["d"]
    assert "needs a conversion" in skipped["conv"]  # never the unconverted source
    # Once a generation is in service, exactly what it recorded.
    gens = Generations(settings.paths().generations)
    gens.record(
        manifest_hash="m",
        aliases={"conv": _target("/store/conv-q8")},
        default="conv",
        preload=(),
        aliases_hash="h",
    )
    served, skipped = map_to_serve(loaded)
    assert served == gens.load(1).alias_map()
    assert served.models["conv"].path == "/store/conv-q8" and set(skipped) == {"a", "b", "d"}


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
