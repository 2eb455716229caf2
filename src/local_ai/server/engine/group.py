"""One model sharded across the ranks that `mlx.launch` started (docs/cluster.md).

Rank 0 runs the engine's HTTP API; every other rank runs `--follow GROUP` and mirrors rank 0's
scheduler in lock-step. Before each batched step rank 0 broadcasts, as JSON through
`all_sum` (never pickle), what changed since the last one: rows inserted (prompt tokens and
max_tokens, greedy or not) and rows removed (cancelled, stopped by a stop string). Sampled
rows' tokens are drawn on rank 0 only and reach the other ranks through one `all_sum` in the
step itself, so sampling parameters, seeds and logits processors live on rank 0 alone; greedy
rows need no collective, as every rank holds the same logits. Idle, rank 0 sends an empty
message every half second.

MLX's ring backend waits for a receive by polling a non-blocking socket, a full core per
follower for as long as it waits. So a follower enters a collective only once a socket of its
ring has data (`select` on MLX's own connections): idle, it sleeps in the kernel instead.

A peer killed with -9 makes MLX's ring backend spin forever in a receive (measured with mlx
0.31.2 on Linux), so a watchdog bounds every collective: past its bound the rank logs
`local-ai-rank-lost: …` on stderr and exits with status 3.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from local_ai.server.engine.batchrows import insert_row, new_batch_generator
from local_ai.server.engine.loaded import NO_REMOTE_CODE, refuse_code
from local_ai.server.groupspec import LOST_MARK, GroupSpec, rank_line
from local_ai.store.holds import hold_of_path, write_hold

log = logging.getLogger("local_ai.engine")

LOST_EXIT = 3
LOST_LINGER_S = 1.0
# Followers give up after this long without a message (idle, rank 0 sends one every
# scheduler.GROUP_HEARTBEAT_S).
MESSAGE_TIMEOUT_S = 10.0
# Bytes every message costs: most (a step, a heartbeat) fit, so one collective carries them.
MESSAGE_HEAD = 1024
# One batched step (a prefill chunk of a large model included) and loading a share of weights.
STEP_TIMEOUT_S = 60.0
JOIN_TIMEOUT_S = 3600.0


def lost(what: str) -> NoReturn:
    """The group cannot go on: say why where the gateway reads it, and exit at once."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{LOST_MARK}: {what}\n")
        sys.stderr.flush()
    # mlx.launch stops reading a rank's output once the rank has exited: let it take the line.
    time.sleep(LOST_LINGER_S)
    os._exit(LOST_EXIT)


class Watchdog:
    """Bounds the collective under way; its thread ends the process when one overruns."""

    def __init__(self, on_overrun: Callable[[str], None] = lost) -> None:
        self._what: str | None = None
        self._deadline = 0.0
        self._on_overrun = on_overrun
        self.last_done = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="group-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def guard(self, what: str, seconds: float) -> Iterator[None]:
        self._deadline = time.monotonic() + seconds
        self._what = f"{what} did not complete within {seconds:.0f} s"
        try:
            yield
        finally:
            self._what = None
            self.last_done = time.monotonic()

    def _watch(self) -> None:
        while True:
            time.sleep(0.2)
            what = self._what
            if what is not None and time.monotonic() > self._deadline:
                self._on_overrun(what)
                return


class Group:
    """This rank's membership: the MLX group, its share of the model, the message channel."""

    def __init__(self, spec: GroupSpec) -> None:
        self.spec = spec
        self.rank = -1
        self.size = 0
        self.ready = False
        self.pids: list[int] = []
        self.world: Any = None
        self.watchdog: Watchdog | None = None
        # A follower's ring connections: readable once a peer entered the next collective.
        self.wake_fds: list[int] = []

    # --- joining (the thread that will run MLX) ------------------------------------------------

    def init(self) -> None:
        import mlx.core as mx

        self.world = mx.distributed.init(strict=True)
        self.rank, self.size = self.world.rank(), self.world.size()
        if self.size != len(self.spec.hosts):
            raise ValueError(
                f"mlx.launch started {self.size} ranks but the group names "
                f"{len(self.spec.hosts)} hosts ({', '.join(self.spec.hosts)})"
            )
        self.watchdog = Watchdog()
        if self.rank > 0:
            self.wake_fds = ring_connections(os.environ.get("MLX_HOSTFILE"))
            if not self.wake_fds:
                log.warning("no ring connections found: idle, this rank polls at full speed")

    def load(self, path: str) -> tuple[Any, Any]:
        """This rank's share of the model at `path` (mlx-lm's sharded loading) and its tokenizer."""
        from mlx_lm.utils import sharded_load

        refuse_code(path)
        check_divisible(path, self.spec.parallel, self.size)
        pipeline = self.world if self.spec.parallel == "pipeline" else None
        tensor = self.world if self.spec.parallel == "tensor" else None
        with self._guard(f"loading {path}", JOIN_TIMEOUT_S):
            model, tokenizer = sharded_load(
                path, pipeline, tensor, tokenizer_config=dict(NO_REMOTE_CODE)
            )[:2]
        return model, tokenizer

    def announce(self) -> None:
        """The one barrier after every rank loaded its share (it also gathers every rank's pid),
        then this rank's line on stdout."""
        import mlx.core as mx

        mine = [0] * self.size
        mine[self.rank] = os.getpid()
        with self._guard("the barrier after loading", JOIN_TIMEOUT_S):
            with _on_generation_stream():
                pids = mx.distributed.all_sum(mx.array(mine), group=self.world)
            self.pids = [int(p) for p in pids.tolist()]  # type: ignore[union-attr,arg-type]
        sys.stdout.write(rank_line(self.rank, self.spec.hosts[self.rank], os.getpid()))
        sys.stdout.flush()
        self.ready = True

    # --- lock-step -----------------------------------------------------------------------------

    def step_guard(self) -> contextlib.AbstractContextManager[None]:
        return self._guard("a generation step across the group", STEP_TIMEOUT_S)

    def send(self, message: dict[str, Any], *, wait: bool = True) -> None:
        """Rank 0: broadcast `message` (JSON) to every other rank. Without `wait` only queued on
        the generation stream, ahead of the step that follows it, so rank 0 keeps building the
        next step while the previous one computes (as mlx-lm's generation loop does)."""
        import numpy as np

        data = json.dumps(message, separators=(",", ":")).encode()
        head = np.zeros(MESSAGE_HEAD, dtype=np.uint8)
        head[:4] = np.frombuffer(len(data).to_bytes(4, "little"), dtype=np.uint8)
        first = data[: MESSAGE_HEAD - 4]
        head[4 : 4 + len(first)] = np.frombuffer(first, dtype=np.uint8)
        with self._guard("sending to the group", MESSAGE_TIMEOUT_S), _on_generation_stream():
            try:
                self._all_sum_bytes(head, wait)
                if len(data) > len(first):
                    self._all_sum_bytes(np.frombuffer(data[len(first) :], dtype=np.uint8), wait)
            except Exception as exc:
                self.end(f"sending to the group failed: {type(exc).__name__}: {exc}")

    def receive(self) -> dict[str, Any]:
        """Followers: the next message from rank 0."""
        import numpy as np

        with self._guard("waiting for rank 0", MESSAGE_TIMEOUT_S), _on_generation_stream():
            if self.wake_fds:  # the watchdog bounds this wait as it bounds the collective
                select.select(self.wake_fds, [], [], 2 * MESSAGE_TIMEOUT_S)
            head = self._all_sum_bytes(np.zeros(MESSAGE_HEAD, dtype=np.uint8))
            size = int.from_bytes(head[:4], "little")
            data = head[4 : 4 + min(size, MESSAGE_HEAD - 4)]
            if size > MESSAGE_HEAD - 4:
                rest = size - (MESSAGE_HEAD - 4)
                data += self._all_sum_bytes(np.zeros(rest, dtype=np.uint8))
        message: dict[str, Any] = json.loads(data)
        return message

    def _all_sum_bytes(self, data: Any, wait: bool = True) -> bytes:
        """One all_sum of a uint8 buffer, evaluated (or queued, without `wait`) before the next
        (MLX may run independent collectives of one eval in any order)."""
        import mlx.core as mx
        import numpy as np

        total = mx.distributed.all_sum(mx.array(data), group=self.world)
        if not wait:
            mx.async_eval(total)  # type: ignore[no-untyped-call]
            return b""
        mx.eval(total)
        return bytes(np.array(total, copy=False))

    def sampler(self, base: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
        """A sampled row's sampler: rank 0 samples with `base` (None: greedy), the others add
        zeros, so every rank continues with rank 0's token. (Greedy rows need none: every rank
        has the same logits and picks the same token, one collective per step fewer.)"""
        import mlx.core as mx

        world = self.world
        if self.rank != 0:

            def follow(logprobs: Any) -> Any:
                zeros = mx.zeros((logprobs.shape[0],), dtype=mx.int32)
                return mx.distributed.all_sum(zeros, group=world)

            return follow
        choose = base or (lambda x: mx.argmax(x, axis=-1))

        def lead(logprobs: Any) -> Any:
            token = choose(logprobs).reshape(-1).astype(mx.int32)
            return mx.distributed.all_sum(token, group=world)

        return lead

    def end(self, what: str) -> NoReturn:
        """The ranks can no longer be trusted to agree: end this one (the others follow)."""
        lost(what)

    def status(self) -> dict[str, Any]:
        age = time.monotonic() - self.watchdog.last_done if self.watchdog else 0.0
        return {
            "alias": self.spec.alias,
            "parallel": self.spec.parallel,
            "ranks": [
                {"rank": rank, "host": host, "pid": pid}
                for rank, (host, pid) in enumerate(zip(self.spec.hosts, self.pids, strict=False))
            ],
            "last_collective_age_s": round(age, 2),
        }

    def _guard(self, what: str, seconds: float) -> contextlib.AbstractContextManager[None]:
        if self.watchdog is None:
            return contextlib.nullcontext()
        return self.watchdog.guard(what, seconds)


def _on_generation_stream() -> contextlib.AbstractContextManager[Any]:
    """The stream mlx-lm generates on: a rank's collectives must run in one order. (Passed as
    `stream=` mlx 0.31 rejects it: "std::get: wrong index for variant".)"""
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    cm: contextlib.AbstractContextManager[Any] = mx.stream(generation_stream)
    return cm


def ring_connections(hostfile: str | None) -> list[int]:
    """This process's TCP connections to or from the addresses of the ring backend's hostfile
    (MLX_HOSTFILE, as mlx.launch writes it: a JSON list per rank of "ip:port"); [] for any
    other backend or a file not in that shape."""
    try:
        ranks = json.loads(Path(hostfile).read_text(encoding="utf-8")) if hostfile else []
        ends = {_endpoint(a) for rank in ranks for a in rank}
    except (OSError, ValueError, TypeError, AttributeError):
        return []
    found = []
    for entry in Path("/dev/fd").iterdir():
        fd = int(entry.name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(fileno=os.dup(fd)) as sock:  # a copy: closing it leaves MLX's
                if sock.type != socket.SOCK_STREAM:
                    continue
                mine, peer = sock.getsockname()[:2], sock.getpeername()[:2]
        except OSError:  # gone meanwhile, not a connection (a listener), not IP
            continue
        if _endpoint(mine) in ends or _endpoint(peer) in ends:
            found.append(fd)
    return found


def _endpoint(address: Any) -> tuple[str, int]:
    """("ip", port) from "ip:port", "[v6]:port" or a socket address."""
    if isinstance(address, str):
        host, _, port = address.rpartition(":")
        return host.strip("[]"), int(port)
    return str(address[0]), int(address[1])


def check_divisible(path: str, parallel: str, ranks: int) -> None:
    """Refuse splits mlx-lm 0.31 gets wrong: its pipeline drops a layer when the ranks do not
    divide the layers, and tensor parallel splits the KV heads."""
    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    key = "num_hidden_layers" if parallel == "pipeline" else "num_key_value_heads"
    count = config.get(key)
    if isinstance(count, int) and count % ranks:
        raise ValueError(
            f"{path}: {parallel} parallel over {ranks} ranks needs {key} ({count}) divisible "
            f"by {ranks}; place the model on a number of hosts that divides it"
        )


class Mirror:
    """A follower's copy of rank 0's batch: the same inserts, removals and steps."""

    def __init__(self, group: Group, model: Any, tokenizer: Any, prefill_chunk: int) -> None:
        self.group = group
        self.model = model
        self.tokenizer = tokenizer
        self.prefill_chunk = prefill_chunk
        self.gen: Any = None
        self.live: set[int] = set()

    def apply(self, message: dict[str, Any]) -> None:
        from mlx_lm.models.cache import make_prompt_cache

        for op in message.get("ops", []):
            if op[0] == "insert":
                _, uid, prompt, max_tokens, greedy = op
                if self.gen is None:
                    self.gen = new_batch_generator(
                        self.model,
                        self.tokenizer,
                        self.group.spec.max_batch_size,
                        self.prefill_chunk,
                    )
                mine = insert_row(
                    self.gen,
                    prompt,
                    max_tokens,
                    make_prompt_cache(self.model),
                    [],
                    None if greedy else self.group.sampler(None),
                )
                if mine != uid:
                    lost(f"out of step with rank 0 (row {mine} here, {uid} there)")
                self.live.add(uid)
            elif op[0] == "remove" and self.gen is not None:
                self.gen.remove(op[1])
                self.live.difference_update(op[1])
                self._close_when_empty()
        if message.get("step") and self.gen is not None:
            with self.group.step_guard():
                _, responses = self.gen.next()
            for response in responses:
                if response.finish_reason is not None:
                    self.live.discard(response.uid)
            self._close_when_empty()

    def _close_when_empty(self) -> None:
        """As rank 0 drops a model's batch when its last row leaves (the next insert starts a
        new BatchGenerator, numbering rows from 0 again)."""
        if self.gen is not None and not self.live:
            self.gen.close()
            self.gen = None


def hold(spec: GroupSpec, rank: int) -> None:
    """Record on this host that rank 0 serves its store entry from here, so its `gc` keeps it
    (an entry found here by digest was never copied, so only this start records it)."""
    found = hold_of_path(spec.model_paths[rank])
    if found is None:
        return  # not a store entry (rank 0's own directory): nothing for gc to keep
    paths, entry = found
    try:
        write_hold(paths, entry, spec.hosts[0], spec.alias, how=f"rank {rank} started")
    except OSError as exc:
        log.warning("rank %s could not record its hold of %s: %s", rank, entry, exc)


def follow(spec: GroupSpec, prefill_chunk: int) -> int:
    """A rank > 0: join, then mirror rank 0 until it says stop."""
    group = Group(spec)
    try:
        group.init()
        model, tokenizer = group.load(spec.model_paths[group.rank])
    except Exception as exc:
        log.error("rank %s could not join the group: %s", group.rank, exc)
        return 2
    hold(spec, group.rank)
    group.announce()
    mirror = Mirror(group, model, tokenizer, prefill_chunk)
    while True:
        try:
            message = group.receive()
            if message.get("stop"):
                log.info("rank 0 ended the group")
                return 0
            mirror.apply(message)
        except Exception as exc:
            lost(f"{type(exc).__name__}: {exc}")
