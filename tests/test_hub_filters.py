"""File selection and name validation: only weights and what a model needs, never hostile names."""

from __future__ import annotations

import pytest

from local_ai.errors import UnsafeInputError
from local_ai.hub.filters import check_names, select_files
from local_ai.util.names import name_problem

REPO_FILES = [
    "config.json",
    "generation_config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "qwen.tiktoken",
    "merges.txt",
    "vocab.json",
    "vocab.txt",
    "chat_template.jinja",
    "special_tokens_map.json",
    # never by default:
    "modeling_qwen.py",
    "configuration_qwen.py",
    "pytorch_model.bin",
    "training_args.bin",
    "optimizer.pt",
    "rng_state.pth",
    "data.pkl",
    "model.ckpt",
    "README.md",
    ".gitattributes",
    "original/consolidated.safetensors",
    "Q8_0.gguf",
]


def test_default_selection_is_weights_configs_tokenizers_templates() -> None:
    assert select_files(REPO_FILES) == sorted(
        [
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "tokenizer.model",
            "qwen.tiktoken",
            "merges.txt",
            "vocab.json",
            "vocab.txt",
            "chat_template.jinja",
            "special_tokens_map.json",
        ]
    )


def test_gguf_selection_is_the_one_named_file() -> None:
    assert select_files(REPO_FILES, gguf_file="Q8_0.gguf") == ["Q8_0.gguf"]


def test_extra_files_is_the_explicit_opt_in() -> None:
    chosen = select_files(REPO_FILES, extra_files=["modeling_*.py", "original/*"])
    assert "modeling_qwen.py" in chosen and "original/consolidated.safetensors" in chosen
    assert "configuration_qwen.py" not in chosen and "pytorch_model.bin" not in chosen


@pytest.mark.parametrize(
    "name",
    [
        "../evil",
        "/etc/passwd",
        "a/%2e%2e/b",
        "a/%2E%2e/b",
        "..\\x",
        "a/../../b",
        "a//b",
        "./config.json",
        "C:/Windows/x",
        "con\x00fig.json",
        "line\nbreak.json",
        "",
        "a/" + "x" * 300,
    ],
)
def test_hostile_names_are_refused(name: str) -> None:
    assert name_problem(name) is not None
    with pytest.raises(UnsafeInputError, match="org/repo"):
        check_names(["config.json", name], repo="org/repo")


@pytest.mark.parametrize("name", ["config.json", "sub/dir/w.safetensors", "a..b.json", "x%y.txt"])
def test_ordinary_names_pass(name: str) -> None:
    assert name_problem(name) is None


def test_names_differing_only_in_case_are_refused() -> None:
    with pytest.raises(UnsafeInputError, match="letter case"):
        select_files(["config.json", "Config.json"])
