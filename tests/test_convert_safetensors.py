"""Safetensors -> MLX goes through mlx-lm's own conversion: for every level, local-ai's output
holds the same tensors and quantization config as ``mlx_lm.convert.convert`` given the same
options, and local-ai refuses what mlx-lm would run or misconvert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from local_ai.convert.recipe import LEVELS, make_recipe
from local_ai.convert.safetensors_to_mlx import convert_safetensors
from local_ai.errors import LocalAIError, MalformedFileError, NotYetError, UnsafeInputError
from tests.convert_helpers import WIDE, assert_same_weights, compare, logits, prompt_ids
from tests.harness import tinymodels as tm


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tm.build_model(tmp_path_factory.mktemp("st") / "qwen3", "qwen3", seed=2, **WIDE)


def _mlx_lm(source: Path, out: Path, level: str, group_size: int | None) -> None:
    from mlx_lm.convert import convert

    recipe = make_recipe(level, group_size)
    kwargs: dict[str, Any] = {"dtype": recipe.target_dtype}
    if recipe.quantized:
        kwargs |= {"quantize": True, "q_group_size": recipe.group_size, "q_mode": recipe.mode}
        kwargs |= {"q_bits": recipe.bits, "quant_predicate": recipe.mixed}
    convert(str(source), str(out), **kwargs)


@pytest.mark.parametrize("level", LEVELS)
def test_each_level_matches_mlx_lm(level: str, source: Path, tmp_path: Path) -> None:
    group = 32 if level in ("q3", "mixed_3_6") else 128 if level == "q6" else None
    ours = tmp_path / "ours"
    ours.mkdir()
    result = convert_safetensors(source, ours, make_recipe(level, group))
    theirs = tmp_path / "theirs"
    _mlx_lm(source, theirs, level, group)
    assert_same_weights(ours, theirs)
    got, want = (json.loads((d / "config.json").read_text()) for d in (ours, theirs))
    assert got.get("quantization") == want.get("quantization")
    assert result.bytes_written == sum(p.stat().st_size for p in ours.glob("model*.safetensors"))
    if make_recipe(level, group).quantized:
        assert result.bits_per_weight is not None
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (ours / name).is_file()


def test_q8_logits_stay_close(source: Path, tmp_path: Path) -> None:
    convert_safetensors(source, tmp_path, make_recipe("q8"))
    ids = prompt_ids(source)
    got = compare(logits(tmp_path, ids), logits(source, ids))
    assert got["rel_rms"] <= 0.04, got  # measured 0.02 (docs/conversion.md)


def test_auto_is_not_yet() -> None:
    with pytest.raises(NotYetError, match="not available yet"):
        make_recipe("auto")
    with pytest.raises(LocalAIError, match="group size 48"):
        make_recipe("q4", 48)
    with pytest.raises(LocalAIError, match="does not apply"):
        make_recipe("bf16", 64)


def test_refuses_remote_code_quantized_and_empty_sources(source: Path, tmp_path: Path) -> None:
    import shutil

    def variant(name: str, **config: Any) -> Path:
        path = tmp_path / name
        shutil.copytree(source, path)
        data = json.loads((path / "config.json").read_text()) | config
        (path / "config.json").write_text(json.dumps(data))
        return path

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafeInputError, match="own Python code"):
        convert_safetensors(
            variant("remote", auto_map={"AutoModel": "x.Y"}), out, make_recipe("q4")
        )
    with pytest.raises(NotYetError, match="already quantized"):
        convert_safetensors(
            variant("quant", quantization={"bits": 4, "group_size": 64}), out, make_recipe("q4")
        )
    empty = variant("empty")
    (empty / "model.safetensors").unlink()
    with pytest.raises(MalformedFileError, match="no weight files"):
        convert_safetensors(empty, out, make_recipe("q4"))
    assert not list(out.iterdir())
