"""Shared by the server tests and benchmarks: tiny models with predictable output, manifests, and
a handle on a real `local-ai server` daemon started as users start it."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from local_ai.util.ports import port_free
from tests.harness import tinymodels as tm

# The scripted tool model answers every prompt with this call.
TOOL_CALL_JSON = '\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
TOOL_NAME = "get_weather"
# Tools with typed parameters, in OpenAI shape (tool-call tests check arguments come back typed).
TYPED_TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "metric": {"type": "boolean"},
                    "opts": {"type": "object"},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Time in a zone",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string"}, "opts": {"type": "object"}},
            },
        },
    },
]
# The scripted model's tool (chat tools wrap it in "function", Responses tools spread it).
TOOL_FUNCTION = {
    "name": TOOL_NAME,
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


# Ports below every OS's ephemeral range (Linux 32768-60999, macOS 49152+): no bind(0) (a fake
# hub, sshd) and no outgoing connection can take one between its choice and the server's bind.
_PORTS_LOW, _PORTS_PER_WORKER, _WORKER_SLICES = 20000, 1536, 8
_handed_out: set[int] = set()


def free_port(count: int = 1) -> int:
    """A free port on 127.0.0.1 (and 0.0.0.0), with `count - 1` free ones after it, that no other
    test of the run is given: each xdist worker picks in its own slice, never the same port
    twice."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % _WORKER_SLICES if worker.isdigit() else 0
    low = _PORTS_LOW + index * _PORTS_PER_WORKER
    for _ in range(500):
        first = random.randrange(low, low + _PORTS_PER_WORKER - count)
        ports = range(first, first + count)
        if _handed_out.isdisjoint(ports) and all(port_free("127.0.0.1", p) for p in ports):
            _handed_out.update(ports)
            return first
    raise RuntimeError(f"no {count} free ports in {low}-{low + _PORTS_PER_WORKER}")


def _rms_normalised(rows: np.ndarray) -> np.ndarray:
    return rows / np.sqrt((rows**2).mean(axis=1, keepdims=True) + 1e-6)


def build_chat_model(out: Path, **shape: Any) -> Path:
    """A qwen3 tiny model whose end tokens never win greedily: with temperature 0 a stream runs
    to max_tokens (sampled, an end token is rare but possible)."""
    if (out / "config.json").exists():
        return out
    tm.build_model(out, "qwen3", tie_word_embeddings=False, **shape)
    weights, _ = tm.load_safetensors(out / "model.safetensors")
    for token in ("<|im_end|>", "<|endoftext|>"):
        # Logit 0 against ~N(0, 1) logits over 1024 tokens: never the argmax.
        weights["lm_head.weight"][tm.token_id("qwen3", token)] = 0.0
    tm.save_safetensors(out / "model.safetensors", weights)
    return out


def build_mlx_chat_model(out: Path, *, seed: int = 0) -> Path:
    """`build_chat_model` quantized to 8 bits in MLX layout: a `path` model that apply serves as
    it is (no conversion)."""
    if (out / "config.json").exists():
        return out
    import shutil

    from mlx_lm.utils import load, quantize_model, save_config, save_model

    source = build_chat_model(out.with_name(out.name + "-hf"), seed=seed)
    model, _, config = load(
        str(source), return_config=True, tokenizer_config={"trust_remote_code": False}
    )
    model, config = quantize_model(model, config, 32, 8)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("*.safetensors"))
    save_model(out, model)
    save_config(config, out / "config.json")
    return out


def build_one_layer_with_text_token(out: Path, text: str) -> int:
    """A 1-layer qwen3 tiny model whose tokenizer has one extra token holding `text` (for
    scripted models that answer with exactly that text); returns the token's id."""
    vocab = tm.TOKENIZER_VOCAB_SIZE + 8
    tm.build_model(out, "qwen3", vocab_size=vocab, tie_word_embeddings=False, num_layers=1)
    tok_json = json.loads((out / "tokenizer.json").read_text())
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    text_id = tm.TOKENIZER_VOCAB_SIZE
    added = {
        "content": text,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": False,
    }
    tok_json["added_tokens"].append({"id": text_id, **added})
    tok_config["added_tokens_decoder"][str(text_id)] = added
    (out / "tokenizer.json").write_text(json.dumps(tok_json))
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return text_id


def _pieces(text: str, size: int, taken: set[str]) -> list[str]:
    """`text` cut every `size` characters, each cut lengthened until its piece is new (a bigram
    chain needs distinct tokens; a piece equal to a vocabulary entry would shadow it)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        j = min(i + size, len(text))
        while j < len(text) and (text[i:j] in taken or text[i:j].isspace()):
            j += 1
        piece = text[i:j]
        while piece in taken:  # the tail repeats an earlier piece: join it to the previous
            piece = out.pop() + piece
        out.append(piece)
        taken.add(piece)
        i = j
    return out


def build_scripted_model(
    out: Path, answers: dict[str, str | list[str]], *, chat_template: str | None = None
) -> Path:
    """A 1-layer qwen3 tiny model that answers with exact texts, then `<|im_end|>`.

    `answers` maps the prompt's last token (as text: "\n" after ChatML's generation prompt,
    "<think>" when the template opens reasoning) to the answer: a string is cut into 5-character
    pieces, each a new added token (so markers arrive split across stream chunks), a list gives the
    pieces. Attention and MLP outputs are zeroed, so the next token depends only on the current one:
    a bigram chain in lm_head.
    """
    if (out / "config.json").exists():
        return out
    from tokenizers import Tokenizer

    tm.build_model(out, "qwen3", num_layers=1, tie_word_embeddings=False)
    base = Tokenizer.from_file(str(out / "tokenizer.json"))
    vocab = base.get_vocab()
    taken = set(vocab) | {text for _, text, _ in tm.added_tokens("qwen3")}
    chains: list[list[str]] = []
    for start, answer in answers.items():
        pieces = _pieces(answer, 5, taken) if isinstance(answer, str) else answer
        chains.append([start, *pieces])
    tok_json = json.loads((out / "tokenizer.json").read_text())
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    ids = {text: tid for tid, text, _ in tm.added_tokens("qwen3")}
    for chain in chains:
        for piece in chain:
            if piece in ids or len(base.encode(piece, add_special_tokens=False).ids) == 1:
                continue
            ids[piece] = (
                tm.TOKENIZER_VOCAB_SIZE + len(tok_json["added_tokens"]) - len(tm.SPECIAL_TOKENS)
            )
            added = {
                "content": piece,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": False,
            }
            tok_json["added_tokens"].append({"id": ids[piece], **added})
            tok_config["added_tokens_decoder"][str(ids[piece])] = added
    if chat_template is not None:
        tok_config["chat_template"] = chat_template
    (out / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, ensure_ascii=False))
    vocab_size = tm.TOKENIZER_VOCAB_SIZE + len(tok_json["added_tokens"]) - len(tm.SPECIAL_TOKENS)
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))

    def token(text: str) -> int:
        if text in ids:
            return ids[text]
        found = tokenizer.encode(text, add_special_tokens=False).ids
        assert len(found) == 1, (text, found)
        return int(found[0])

    for start in answers:  # the chain starts at the generation prompt's last token
        prompt = tokenizer.encode("<|im_start|>assistant\n" + start.lstrip("\n")).ids
        assert prompt[-1] == token(start), (start, prompt)
    # Rebuild at the grown vocabulary size (tensors are drawn per name: the rest is unchanged).
    config = json.loads((out / "config.json").read_text())
    config["vocab_size"] = vocab_size
    weights = tm.make_weights(config)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in weights:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name][:] = 0.0
    weights["model.norm.weight"][:] = 1.0
    unit = _rms_normalised(weights["model.embed_tokens.weight"])
    head = np.zeros_like(weights["lm_head.weight"])
    end = tm.token_id("qwen3", "<|im_end|>")
    successor: dict[int, int] = {}
    for chain in chains:
        for current, following in itertools.pairwise([*map(token, chain), end]):
            assert successor.setdefault(current, following) == following, chain
            head[following] += 20.0 * unit[current]
    weights["lm_head.weight"] = head
    tm.save_safetensors(out / "model.safetensors", weights)
    return out


def build_tool_model(out: Path) -> Path:
    """A qwen3 tiny model that always answers with one `get_weather` tool call, then stops: after
    the prompt's final "\n" comes `<tool_call>`, one token holding the JSON, `</tool_call>`."""
    return build_scripted_model(out, {"\n": ["<tool_call>", TOOL_CALL_JSON, "</tool_call>"]})


def write_manifest(
    directory: Path,
    *,
    port: int,
    models: dict[str, Path],
    context: int = 4096,
    server_extra: str = "",
    engine_extra: str = "",
) -> Path:
    lines = ["version = 1", "[server]", f"port = {port}", server_extra, "[server.engine]"]
    lines.append(engine_extra)
    for alias, path in models.items():
        lines += [f"[models.{alias}]", f'path = "{path}"', f"context = {context}"]
    manifest = directory / "local-ai.toml"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@dataclass
class Daemon:
    """A real server started with `local-ai server start`, in its own state home."""

    home: Path
    manifest: Path
    port: int
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "LOCAL_AI_HOME": str(self.home),
            "LOCAL_AI_CONFIG": str(self.manifest),
            "NO_COLOR": "1",
            "COLUMNS": "200",
            **self.extra_env,
        }

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "local_ai", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            timeout=timeout,
            check=False,
        )

    def start(self) -> subprocess.CompletedProcess[str]:
        """`server start`; on the rare port collision with a process outside this run, again on
        another port (the manifest and `port` follow)."""
        for _ in range(3):
            result = self.cli("server", "start", "--json")
            collided = f"port {self.port} is already in use"
            if result.returncode == 0 or collided not in result.stderr + self.log():
                return result
            port = free_port()
            text = self.manifest.read_text()
            self.manifest.write_text(re.sub(rf"(?m)^port = {self.port}$", f"port = {port}", text))
            self.port = port
        return result

    def pidfile(self) -> dict[str, Any]:
        return dict(json.loads((self.home / "run" / "server.json").read_text()))

    def token(self) -> str:
        return (self.home / "run" / "admin-token").read_text().strip()

    def log(self, name: str = "server.log") -> str:
        path = self.home / "logs" / name
        return path.read_text(errors="replace") if path.exists() else ""

    @contextlib.contextmanager
    def running(self) -> Iterator[Daemon]:
        """Started for the block, then stopped (killed if it would not stop)."""
        result = self.start()
        assert result.returncode == 0, result.stderr + self.log()
        try:
            yield self
        finally:
            self.cli("server", "stop", "--timeout", "5")
            self.kill()

    def kill(self) -> None:
        """Last-resort cleanup for a test that failed mid-way: never leave servers behind."""
        try:
            info = self.pidfile()
        except (OSError, ValueError):
            return
        for pid in (info.get("engine_pid"), info.get("pid")):
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), signal.SIGKILL)


def raw_status(port: int, request: bytes) -> int:
    """Status code of a hand-written HTTP request (for Host headers httpx will not send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def claude_code_body(billing: str, stream: bool) -> dict[str, Any]:
    """The shape Claude Code sends (trimmed): billing line, cache_control, adaptive thinking,
    a system message inside messages, thinking history, a server tool and tool results."""
    return {
        "model": "tiny",
        "max_tokens": 16,
        "stream": stream,
        "temperature": 1,
        "thinking": {"type": "adaptive"},
        "metadata": {"user_id": "user_abc_account__session_123"},
        "system": [
            {
                "type": "text",
                "text": f"x-anthropic-billing-header: cc_version=2.1.{billing}; cc_entrypoint=cli",
            },
            {
                "type": "text",
                "text": "You are Claude Code, a coding agent. " * 20,
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "tools": [
            {
                "name": "Read",
                "description": "Read a file",
                "input_schema": {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    "type": "object",
                    "properties": {"file_path": {"type": "string"}},
                    "required": ["file_path"],
                    "additionalProperties": False,
                },
            },
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        ],
        "messages": [
            {"role": "system", "content": "Extra system instructions."},
            {"role": "user", "content": [{"type": "text", "text": "Open main.py"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should read it.", "signature": "sig"},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "Read",
                        "input": {"file_path": "main.py"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "Read",
                        "input": {"file_path": "b.py"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "print(1)"}],
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": "print(2)",
                        "is_error": False,
                    },
                    {
                        "type": "text",
                        "text": "What does it do?",
                        "cache_control": {"type": "ephemeral"},
                    },
                ],
            },
        ],
    }
