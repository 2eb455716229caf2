"""Which repo files local-ai fetches, and which file names it refuses outright.

File names come from the hub (an untrusted server): they are checked before anything is written.
Only weights and the files a model needs are selected; code and pickle files never are unless the
manifest lists them in `extra_files`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from local_ai.errors import UnsafeInputError
from local_ai.util.names import name_problem

# Top-level files a model needs (weights, configs, tokenizers, chat templates).
DEFAULT_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.json",
    "tokenizer.model",
    "*.tiktoken",
    "merges.txt",
    "vocab.txt",
    "*.jinja",
)
# Never selected by the default patterns, whatever their name says (executable code, pickles).
DENIED_PATTERNS: tuple[str, ...] = (
    "*.py",
    "*.pyc",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.pickle",
    "*.ckpt",
    "*.so",
    "*.dylib",
    "*.sh",
)


def check_names(names: Iterable[str], *, repo: str) -> None:
    """Refuse the whole listing if any name is hostile: an honest hub never sends one."""
    for name in names:
        problem = name_problem(name)
        if problem is not None:
            raise UnsafeInputError(
                f"the hub lists a file in {repo} whose name {problem}: {name!r}; nothing was "
                "downloaded",
                hint="this repo (or the HF_ENDPOINT serving it) cannot be trusted; check "
                "HF_ENDPOINT and the repo name in local-ai.toml",
            )


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def is_default_file(name: str) -> bool:
    """A top-level file of a kind every model may need, and not code or a pickle."""
    if "/" in name:
        return False
    return _matches(name, DEFAULT_PATTERNS) and not _matches(name, DENIED_PATTERNS)


def select_files(
    names: Iterable[str], *, gguf_file: str | None = None, extra_files: Sequence[str] = ()
) -> list[str]:
    """The names to fetch: the one GGUF file if named, else the default set; plus `extra_files`
    patterns (the explicit opt-in for anything else, code included). Sorted, no duplicates."""
    chosen: set[str] = set()
    for name in names:
        if gguf_file is not None:
            if name == gguf_file:
                chosen.add(name)
        elif is_default_file(name):
            chosen.add(name)
        if extra_files and _matches(name, extra_files):
            chosen.add(name)
    _check_case_collisions(chosen)
    return sorted(chosen)


def _check_case_collisions(names: Iterable[str]) -> None:
    # macOS volumes are case-insensitive: two names differing only in case would overwrite.
    seen: dict[str, str] = {}
    for name in sorted(names):
        other = seen.setdefault(name.casefold(), name)
        if other != name:
            raise UnsafeInputError(
                f"files {other!r} and {name!r} differ only in letter case and would overwrite "
                "each other on a case-insensitive disk",
                hint="narrow `extra_files` in local-ai.toml so only one of them is fetched",
            )
