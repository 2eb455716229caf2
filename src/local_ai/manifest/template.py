"""The commented manifest `local-ai init` writes, with models sized for the machine."""

from __future__ import annotations

from dataclasses import dataclass

from local_ai.sizing import ArchShape

GB = 1000**3


@dataclass(frozen=True)
class Suggestion:
    alias: str
    repo: str
    approx_gb: float  # weights on disk / in memory, in GB
    context: int
    why: str
    shape: ArchShape  # from the repo's config.json: sizes the KV cache at `context`

    @property
    def needed_bytes(self) -> int:
        """Weights plus KV cache, as `plan` sizes them."""
        return int(self.approx_gb * GB) + self.shape.kv_bytes(self.context)


_QWEN3_SMALL = ArchShape(36, 8, 128)  # Qwen3-4B and Qwen3-8B
_QWEN3_CODER = ArchShape(48, 4, 128)  # Qwen3-Coder-30B-A3B
# Real MLX conversions, smallest first; chosen by the memory a machine can give to models.
_CODERS = [
    Suggestion(
        "coder",
        "mlx-community/Qwen3-4B-4bit",
        2.3,
        4096,
        "fits 8 GB Macs at 4k context",
        _QWEN3_SMALL,
    ),
    Suggestion("coder", "mlx-community/Qwen3-8B-4bit", 4.6, 32768, "fits 16 GB Macs", _QWEN3_SMALL),
    Suggestion(
        "coder",
        "mlx-community/Qwen3-Coder-30B-A3B-Instruct-4bit",
        17.2,
        65536,
        "a 30B mixture-of-experts coder, 3B active: fast on 36 GB+",
        _QWEN3_CODER,
    ),
    Suggestion(
        "coder",
        "mlx-community/Qwen3-Coder-30B-A3B-Instruct-8bit",
        32.5,
        131072,
        "the same coder at 8-bit for 64 GB+",
        _QWEN3_CODER,
    ),
]
_FAST = Suggestion(
    "fast", "mlx-community/Qwen3-4B-4bit", 2.3, 32768, "a quick model for small tasks", _QWEN3_SMALL
)


def suggest_models(usable_bytes: int) -> list[Suggestion]:
    """The largest coder whose weights and KV cache fit, plus a fast model when both fit
    together (the engine keeps two models loaded)."""
    coder = _CODERS[0]
    for candidate in _CODERS:
        if candidate.needed_bytes <= usable_bytes:
            coder = candidate
    picks = [coder]
    if coder.repo != _FAST.repo and coder.needed_bytes + _FAST.needed_bytes <= usable_bytes:
        picks.append(_FAST)
    return picks


def render_manifest(*, machine: str, usable_bytes: int, schema_ref: str | None) -> str:
    """A commented manifest for people to read and edit."""
    picks = suggest_models(usable_bytes)
    lines = []
    if schema_ref:
        lines.append(f"#:schema {schema_ref}")
    lines += [
        "# local-ai.toml: what local-ai makes true on this machine.",
        f"# Written by `local-ai init` for {machine}.",
        "# Every key is documented in docs/manifest.md; `local-ai plan` shows what would change.",
        "",
        "version = 1",
        "",
        "[server]",
        "# Loopback only. Binding another address requires api_key_env (or api_key).",
        'host = "127.0.0.1"',
        "port = 8080",
        f'default_model = "{picks[0].alias}"',
        f'preload = ["{picks[0].alias}"]',
        "",
        "[server.engine]",
        "# Models kept in memory at once, and how long an idle one stays loaded.",
        "max_loaded_models = 2",
        'idle_ttl = "30m"',
        "",
    ]
    for pick in picks:
        lines += [
            f"# {pick.why} (~{pick.approx_gb:g} GB)",
            f"[models.{pick.alias}]",
            f'repo = "{pick.repo}"',
            f"context = {pick.context}",
            "",
        ]
    lines += [
        "[benchmark]",
        "# Measure tokens/s of new or rebuilt models on apply.",
        "on_apply = true",
        "",
        "# Editors and agents that apply configures to use this server.",
        "[clients.zed]",
        "enabled = true",
        "",
        "[clients.claude_code]",
        "enabled = false",
        "",
        "[clients.goose]",
        "enabled = false",
        "",
        "[clients.codex]",
        "enabled = false",
        "",
    ]
    return "\n".join(lines)
