"""Generated artifacts match the models; tomlkit edits keep comments and order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from local_ai.errors import ManifestError
from local_ai.manifest.edit import remove_model, set_model
from local_ai.manifest.load import load_manifest
from local_ai.manifest.schema import main as schema_main
from local_ai.manifest.schema import schema_text, stale_files

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_committed_schema_and_reference_are_current() -> None:
    stale = stale_files(REPO_ROOT)
    assert not stale, (
        f"{[str(p) for p in stale]} differ from the models; "
        "run: uv run python -m local_ai.manifest.schema --write"
    )


def test_schema_check_detects_drift(tmp_path: Path) -> None:
    assert schema_main(["--root", str(tmp_path), "--check"]) == 1
    assert schema_main(["--root", str(tmp_path), "--write"]) == 0
    assert schema_main(["--root", str(tmp_path), "--check"]) == 0
    schema = tmp_path / "schemas" / "local-ai.schema.json"
    schema.write_text(schema.read_text().replace("Context length", "Ctx"))
    assert schema_main(["--root", str(tmp_path), "--check"]) == 1


def test_schema_describes_the_manifest() -> None:
    schema = json.loads(schema_text())
    assert schema["additionalProperties"] is False
    model = schema["$defs"]["ModelSpec"]
    assert "q4" in model["properties"]["quantize"]["anyOf"][0]["enum"]
    models = schema["properties"]["models"]
    assert list(models["patternProperties"]) == ["^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"]
    assert models["additionalProperties"] is False


EXISTING = """\
#:schema ./schemas/local-ai.schema.json
# my dotfiles manifest
version = 1

[server]
port = 8081  # not the default: 8080 is taken by my other tool

# the model I use every day
[models.coder]
repo = "mlx-community/Qwen3-8B-4bit"
context = 32768  # enough for my repos

[benchmark]
on_apply = false
"""


def test_set_model_keeps_comments_and_order(tmp_path: Path) -> None:
    path = tmp_path / "local-ai.toml"
    path.write_text(EXISTING)
    set_model(path, "fast", {"repo": "mlx-community/Qwen3-4B-4bit", "quantize": None})
    text = path.read_text()
    assert text.startswith(EXISTING.split("[benchmark]")[0])
    assert "# not the default: 8080 is taken by my other tool" in text
    assert "context = 32768  # enough for my repos" in text
    assert '[models.fast]\nrepo = "mlx-community/Qwen3-4B-4bit"' in text
    assert list(load_manifest(path).manifest.models) == ["coder", "fast"]
    # Updating one key of an existing model leaves its other keys and comments alone.
    set_model(path, "coder", {"quantize": "q6"})
    text = path.read_text()
    assert "context = 32768  # enough for my repos" in text
    assert load_manifest(path).manifest.models["coder"].quantize == "q6"
    remove_model(path, "fast")
    assert "[models.fast]" not in path.read_text()
    assert "# the model I use every day" in path.read_text()


def test_invalid_edit_leaves_the_file_untouched(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "local-ai.toml"
    path.write_text(EXISTING)
    with pytest.raises(ManifestError) as info:
        set_model(path, "bad", {"repo": "mlx-community/X", "quantize": "q7"})
    assert info.value.problems[0].key == "models.bad.quantize"
    assert path.read_text() == EXISTING
    assert sorted(p.name for p in path.parent.iterdir()) == ["local-ai.toml"]  # no temp files left


def test_set_model_creates_a_manifest(tmp_path: Path) -> None:
    path = tmp_path / "new.toml"
    manifest = set_model(path, "m", {"path": "/models/m"})
    assert manifest.models["m"].path == "/models/m"
