"""The sharded engine under a real `mlx.launch` (ring backend, 2 ranks on 127.0.0.1): greedy
answers through rank 0's socket equal the unsharded engine's for the same model (pipeline and
tensor parallel; OpenAI and Anthropic shapes, streamed or not; tool calls), every rank prints
its `local-ai-rank` line, and a lost peer ends rank 0 within a bound."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from local_ai.server.engine.group import MESSAGE_TIMEOUT_S
from local_ai.server.groupspec import LOST_MARK, RANK_MARK
from tests.harness import tinymodels as tm
from tests.server_helpers import (
    TOOL_FUNCTION,
    TOOL_NAME,
    build_chat_model,
    build_tool_model,
    free_port,
    wait_for,
)

# Two engines starting on 2 busy cores: generous, and only a failure waits this long.
START_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 120.0
# A lost peer must end rank 0 within the watchdog's bound plus scheduling slack.
LOST_WITHIN_S = MESSAGE_TIMEOUT_S + 30.0
PROMPTS = ["Write a haiku about rivers."]


def _mlx_layout(source: Path, out: Path) -> Path:
    """`source` saved as mlx-lm saves a converted model (MLX names, an index): pipeline
    loading reads the index to pick each rank's files."""
    import shutil

    from mlx_lm.utils import load, save_config, save_model

    model, _, config = load(
        str(source), return_config=True, tokenizer_config={"trust_remote_code": False}
    )
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    save_model(out, model)
    save_config(config, out / "config.json")
    return out


def _client(sock: Path) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(sock)),
        base_url="http://engine",
        timeout=REQUEST_TIMEOUT_S,
    )


def _healthy(sock: Path) -> bool:
    try:
        with _client(sock) as client:
            return client.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Launched:
    """An `mlx.launch` process group running one sharded engine."""

    proc: subprocess.Popen[bytes]
    sock: Path
    out: Path
    err: Path
    model: str

    def ranks(self) -> dict[int, dict[str, Any]]:
        lines = self.out.read_text(errors="replace").splitlines()
        docs = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith(RANK_MARK)]
        return {doc["rank"]: doc for doc in docs}

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def stop(self) -> None:
        for rank in self.ranks().values():  # a stopped rank ignores SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(rank["pid"], signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def _launch(base: Path, model: Path, parallel: str) -> Launched:
    """The contract's command: mlx.launch with a hostfile of two ranks on this machine, rank 0
    with --config (holding the group), rank 1 with --follow GROUP."""
    base.mkdir(parents=True, exist_ok=True)
    group = {
        "alias": "sharded",
        "parallel": parallel,
        "hosts": ["studio", "mini"],
        "model_paths": [str(model), str(model)],
        "max_batch_size": 4,
        "debug": False,
    }
    sock = base / "engine.sock"
    config = {
        "socket": str(sock),
        "aliases_file": str(base / "state" / "aliases.json"),
        "parent_pid": os.getpid(),  # the gateway's; rank 0's own parent is mlx.launch
    }
    (base / "engine.json").write_text(json.dumps({**config, "group": group}))
    host = {"ssh": "127.0.0.1", "ips": ["127.0.0.1"], "rdma": []}
    (base / "hostfile.json").write_text(
        json.dumps({"backend": "ring", "envs": [], "hosts": [host, host]})
    )
    engine = f"exec {shlex.quote(sys.executable)} -m local_ai.server.engine"
    rank0 = f"--config {shlex.quote(str(base / 'engine.json'))}"
    script = (
        f'case "$MLX_RANK" in 0) {engine} {rank0} ;; '
        f"*) {engine} --follow {shlex.quote(json.dumps(group))} ;; esac"
    )
    launcher = Path(sys.executable).parent / "mlx.launch"
    argv = [str(launcher), "--hostfile", str(base / "hostfile.json")]
    argv += ["--starting-port", str(free_port(2)), "--", "sh", "-c", script]
    out, err = base / "launch.out", base / "launch.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            argv,
            cwd=base,  # no file named "sh" here, which mlx.launch would run as a script
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    return Launched(proc, sock, out, err, str(model))


def _reference_engine(base: Path, models: list[Path]) -> tuple[subprocess.Popen[bytes], Path]:
    """The ordinary (unsharded) engine serving the same model directories."""
    base.mkdir(parents=True, exist_ok=True)
    aliases = {"models": {f"m{i}": {"path": str(p)} for i, p in enumerate(models)}}
    (base / "state").mkdir(exist_ok=True)
    (base / "state" / "aliases.json").write_text(json.dumps(aliases))
    sock = base / "engine.sock"
    config = {
        "socket": str(sock),
        "aliases_file": str(base / "state" / "aliases.json"),
        "max_loaded_models": len(models),
        "max_batch_size": 4,
    }
    (base / "engine.json").write_text(json.dumps(config))
    log = (base / "engine.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "local_ai.server.engine", "--config", str(base / "engine.json")],
        cwd=base,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, sock


def _wait_ready(launched: Launched) -> None:
    def ready() -> bool:
        if launched.proc.poll() is not None:
            raise AssertionError(
                f"mlx.launch exited with {launched.proc.returncode}:\n" + launched.stderr()[-3000:]
            )
        return len(launched.ranks()) == 2 and _healthy(launched.sock)

    assert wait_for(ready, START_TIMEOUT_S, interval=0.5), launched.stderr()[-3000:]


@contextlib.contextmanager
def _serving(base: Path, model: Path, parallel: str) -> Iterator[tuple[Launched, Path]]:
    """The sharded group and the unsharded engine for `model`, started at once (their imports
    and loads overlap), both healthy."""
    launched = _launch(base / "group", model, parallel)
    ref_proc, ref_sock = _reference_engine(base / "ref", [model])
    try:
        assert wait_for(lambda: _healthy(ref_sock), START_TIMEOUT_S, interval=0.5)
        _wait_ready(launched)
        yield launched, ref_sock
    finally:
        launched.stop()
        ref_proc.kill()
        ref_proc.wait(timeout=30)


def _openai(sock: Path) -> Any:
    import openai

    return openai.OpenAI(base_url="http://engine/v1", api_key="x", http_client=_client(sock))


def _anthropic(sock: Path) -> Any:
    import anthropic
    import httpx2  # what the anthropic SDK is built on

    client = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(sock)), timeout=REQUEST_TIMEOUT_S)
    return anthropic.Anthropic(base_url="http://engine/anthropic", api_key="x", http_client=client)


def _answers(sock: Path, model: str) -> list[Any]:
    """Greedy answers in every shape: OpenAI and Anthropic, whole and streamed, and a seeded
    sample (sampled on rank 0, the same on every rank)."""
    chat, messages = _openai(sock), _anthropic(sock)
    greedy = {"temperature": 0}  # this anthropic SDK version dropped the parameter
    out: list[Any] = []
    for prompt in PROMPTS:
        turn = [{"role": "user", "content": prompt}]
        whole = chat.chat.completions.create(
            model=model, messages=turn, max_tokens=24, temperature=0
        )
        out.append((whole.choices[0].message.content, whole.usage.completion_tokens))
        stream = chat.chat.completions.create(
            model=model, messages=turn, max_tokens=24, temperature=0, stream=True
        )
        out.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
        reply = messages.messages.create(
            model=model, messages=turn, max_tokens=16, extra_body=greedy
        )
        out.append([b.text for b in reply.content if b.type == "text"])
        with messages.messages.stream(
            model=model, messages=turn, max_tokens=16, extra_body=greedy
        ) as events:
            out.append(events.get_final_text())
    seeded = chat.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=16,
        seed=7,
        temperature=0.9,
    )
    out.append(seeded.choices[0].message.content)
    return out


def _check_group(launched: Launched, reference: Path, parallel: str) -> None:
    sharded = _answers(launched.sock, launched.model)
    assert sharded == _answers(reference, launched.model)
    assert any(isinstance(a, str) and a for a in sharded)  # not all empty

    with _client(launched.sock) as client:
        status = client.get("/status").json()
    ranks = launched.ranks()
    assert ranks[0]["host"] == "studio" and ranks[1]["host"] == "mini"
    assert status["group"]["parallel"] == parallel
    assert status["group"]["ranks"] == [ranks[0], ranks[1]]
    assert status["pid"] == ranks[0]["pid"]
    # Idle, rank 0 still talks to rank 1 (its heartbeat) every half second.
    assert status["group"]["last_collective_age_s"] < 5


# One group per parallel mode, each test ending its group: xdist may run them in two workers.


def test_pipeline_group_answers_as_unsharded_and_a_hung_peer_ends_it(tmp_path: Path) -> None:
    hf = tm.build_model(tmp_path / "dsv2-hf", "deepseek_v2", num_layers=4)
    model = _mlx_layout(hf, tmp_path / "dsv2")
    with _serving(tmp_path, model, "pipeline") as (launched, reference):
        _check_group(launched, reference, "pipeline")

        # A rank that stops answering (a frozen Mac, a pulled cable) leaves rank 0 in a
        # collective that never completes: its watchdog ends it.
        ranks = launched.ranks()
        os.kill(ranks[1]["pid"], signal.SIGSTOP)
        started = time.monotonic()
        assert wait_for(lambda: _gone(ranks[0]["pid"]), LOST_WITHIN_S, interval=0.2)
        took = time.monotonic() - started
        assert wait_for(lambda: f"{LOST_MARK}: " in launched.stderr(), 30), launched.stderr()
        assert took >= MESSAGE_TIMEOUT_S - 1  # its bound, not an early false alarm
        os.kill(ranks[1]["pid"], signal.SIGCONT)  # it takes mlx.launch's SIGTERM now
        launched.proc.wait(timeout=60)  # the group ends (mlx.launch exits 0 even so)


def test_tensor_group_answers_as_unsharded_and_kill_9_of_rank_1_ends_it(tmp_path: Path) -> None:
    model = build_chat_model(tmp_path / "qwen3")
    with _serving(tmp_path, model, "tensor") as (launched, reference):
        _check_group(launched, reference, "tensor")
        _check_batching(launched, reference)

        ranks = launched.ranks()
        os.kill(ranks[1]["pid"], signal.SIGKILL)
        assert wait_for(lambda: _gone(ranks[0]["pid"]), LOST_WITHIN_S, interval=0.2)
        launched.proc.wait(timeout=60)
        assert not _healthy(launched.sock)


def _check_batching(launched: Launched, reference: Path) -> None:
    """Rows join, end by a stop string and are cancelled while others run: every rank keeps
    the same batch, so answers still equal the unsharded engine's."""
    import concurrent.futures

    model = launched.model
    # The first prompt's tokens take more than one message head (MESSAGE_HEAD bytes) to send.
    long = "one river, " * 150
    # The last row is sampled (its token crosses the group in the step), the others greedy.
    asks = [(long, 24, None), ("two rivers", 8, None), ("three rivers", 24, "stop"), ("4", 16, 5)]

    def ask(sock: Path, prompt: str, n: int, stop: Any) -> tuple[str, str]:
        # An int in the stop place is a seed: that row is sampled.
        how = {"seed": stop, "temperature": 0.9} if isinstance(stop, int) else {"stop": stop}
        reply = _openai(sock).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=n,
            **({"temperature": 0} | how),
        )
        return reply.choices[0].message.content or "", reply.choices[0].finish_reason

    expected = [ask(reference, p, n, None) for p, n, _ in asks[:3]] + [ask(reference, *asks[3])]
    # A stop string from the middle of the third answer: rank 0 removes that row mid-batch.
    text = expected[2][0]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), text
    asks[2] = ("three rivers", 24, stop)
    expected[2] = ask(reference, *asks[2])
    assert expected[2][1] == "stop" and len(expected[2][0]) < len(text)

    # A long stream that the client drops after a few chunks, while the others run.
    chat = _openai(launched.sock)
    dropped = chat.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "a long story"}],
        max_tokens=400,
        temperature=0,
        stream=True,
    )
    for _, _chunk in zip(range(3), dropped, strict=False):
        pass
    with concurrent.futures.ThreadPoolExecutor(len(asks)) as pool:
        futures = [pool.submit(ask, launched.sock, *a) for a in asks]
        dropped.close()
        assert [f.result() for f in futures] == expected

    def idle() -> bool:
        with _client(launched.sock) as client:
            return client.get("/status").json()["active_generations"] == 0

    assert wait_for(idle, REQUEST_TIMEOUT_S, interval=0.2)
    assert ask(launched.sock, *asks[0]) == expected[0]  # still in step after all that


def _gone(pid: int) -> bool:
    """Exited (a zombie not yet reaped by mlx.launch counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.slow
def test_tool_call_through_a_tensor_parallel_group(tmp_path: Path) -> None:
    """The scripted tool model sharded over two ranks answers the same tool call as unsharded."""
    model = build_tool_model(tmp_path / "tool")
    with _serving(tmp_path, model, "tensor") as (launched, reference):
        tools = [{"type": "function", "function": TOOL_FUNCTION}]
        turn = [{"role": "user", "content": "weather in Paris?"}]
        calls = []
        for sock in (launched.sock, reference):
            reply = _openai(sock).chat.completions.create(
                model=str(model), messages=turn, tools=tools, max_tokens=32, temperature=0
            )
            choice = reply.choices[0]
            assert choice.finish_reason == "tool_calls"
            calls.append(
                [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
            )
        assert calls[0] == calls[1] == [(TOOL_NAME, '{"city": "Paris"}')]


def test_a_bad_group_is_refused_naming_the_keys() -> None:
    bad = {"alias": "x", "parallel": "ring", "hosts": ["a", "b"], "model_paths": ["/m"]}
    done = subprocess.run(
        [sys.executable, "-m", "local_ai.server.engine", "--follow", json.dumps(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--follow: parallel must be one of pipeline, tensor" in done.stderr
    assert "hosts and model_paths must have one entry per rank" in done.stderr
    assert "max_batch_size must be a positive integer" in done.stderr


@pytest.mark.parametrize(
    ("parallel", "key", "count"),
    [("pipeline", "num_hidden_layers", 61), ("tensor", "num_key_value_heads", 3)],
)
def test_splits_mlx_lm_gets_wrong_are_refused(
    tmp_path: Path, parallel: str, key: str, count: int
) -> None:
    from local_ai.server.engine.group import check_divisible

    (tmp_path / "config.json").write_text(json.dumps({key: count}))
    with pytest.raises(ValueError, match=rf"{key} \({count}\) divisible by 2"):
        check_divisible(str(tmp_path), parallel, 2)
    check_divisible(str(tmp_path), parallel, 1)
