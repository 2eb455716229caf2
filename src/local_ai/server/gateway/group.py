"""A sharded alias's group of ranks, supervised like the engine (EngineSupervisor's loop:
wait for /health, restart with backoff, error state after repeated failures), started by
`mlx.launch` through `python -m local_ai.cluster.launch` (docs/cluster.md).

The launcher runs in its own session so stopping it stops every local rank and the ssh
connections to the others. Each rank prints one `local-ai-rank {...}` line once loaded; while
the group serves, rank 0's pid is checked here with os.kill every few seconds, and each other
rank's by one long-lived ssh to its host running a `kill -0` loop that prints a line each time
(one login per rank, not one per check), so a dead rank is named by host and the group is
restarted at once instead of waiting for the survivors to notice (they exit within ~10 s)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

from local_ai import settings
from local_ai.server.aliases import GroupEntry
from local_ai.server.gateway.supervisor import STOP_TIMEOUT_S, EngineSpec, EngineSupervisor
from local_ai.server.groupspec import GroupSpec, parse_rank_line
from local_ai.util.atomic import atomic_write_text

log = logging.getLogger("local_ai.gateway")

WATCH_S = 2.0  # how often each rank's pid is checked while the group serves
SSH_CHECK_TIMEOUT_S = 15.0  # also the longest a remote rank's watcher may stay silent
SSH_FAILED = 255  # ssh's own exit code: the host, not the pid, did not answer
OUTPUT_DRAIN_S = 2.0  # for the launcher's output once its session is killed
RANK_LINES_S = 30.0  # after rank 0's /health, for the other ranks' lines (ssh, mlx.launch)
# mlx.launch's note when a rank's process ends (mlx/_distributed_utils/launch.py).
_NODE_ENDED = re.compile(r"Node with rank (\d+) ((?:exited with code -?\d+)|(?:was killed))")


def group_doc(alias: str, group: GroupEntry, spec: EngineSpec) -> dict[str, Any]:
    """GROUP of the contract: what every rank is started with (validated as every rank will)."""
    doc = {
        "alias": alias,
        "parallel": group.parallel,
        "hosts": list(group.hosts),
        "model_paths": list(group.model_paths),
        "max_batch_size": spec.max_batch_size,
        "debug": spec.debug,
    }
    return GroupSpec.parse(doc, f"group {alias}").to_json()


def _watch_command(pid: int) -> str:
    """The remote command of a rank's watcher: `alive` every WATCH_S while `pid` lives, then
    `gone`. The rank runs as the ssh user, so kill -0 fails only when the pid is gone."""
    check = f"kill -0 {int(pid)} 2>/dev/null"
    loop = f"while {check}; do echo alive; sleep {WATCH_S:g}; done; echo gone"
    return f"sh -c {shlex.quote(loop)}"  # POSIX sh whatever the login shell is


class RankWatcher:
    """One ssh to a remote rank's host, kept open while the group serves; `answer` is the
    latest (is the pid alive, why it could not be told), as GroupSupervisor._alive gives it."""

    def __init__(self, ssh: list[str], pid: int, wake: asyncio.Event) -> None:
        self.pid = pid
        self.answer: tuple[bool | None, str | None] = (True, None)
        self._heard = asyncio.Event()  # a line came, or the watch ended
        self._proc: asyncio.subprocess.Process | None = None
        self._task = asyncio.create_task(self._follow(ssh, wake), name=f"watch-{pid}")

    @property
    def lapsed(self) -> bool:
        """Ended without a verdict on the rank: the group starts another at its next check."""
        return self._task.done() and self.answer == (None, None)

    async def _follow(self, ssh: list[str], wake: asyncio.Event) -> None:
        try:
            self.answer = await self._listen(ssh)
        except Exception:  # e.g. a line over the reader's limit: watch again, do not guess
            log.exception("watching pid %s over ssh failed", self.pid)
            self.answer = (None, None)
        self._heard.set()
        if self.answer != (None, None):
            wake.set()  # news for the group now; a lapsed watch is replaced at the next check

    async def _listen(self, ssh: list[str]) -> tuple[bool | None, str | None]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *ssh,
                _watch_command(self.pid),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # ssh's own complaint, kept as its last word
                start_new_session=True,  # a Ctrl-C to a foreground gateway is not the link's end
            )
        except OSError:
            return None, None  # cannot run ssh here: not the rank's fault
        self._proc = proc
        assert proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline, said = loop.time() + SSH_CHECK_TIMEOUT_S, ""
        while True:
            try:
                raw = await asyncio.wait_for(proc.stdout.readline(), deadline - loop.time())
            except TimeoutError:
                return False, f"no answer over ssh within {SSH_CHECK_TIMEOUT_S:.0f} s"
            line = raw.decode("utf-8", "replace").strip()
            if line == "alive":
                deadline = loop.time() + SSH_CHECK_TIMEOUT_S
                self._heard.set()
            elif line == "gone":
                return False, None
            elif raw:
                said = line or said
            elif await proc.wait() == SSH_FAILED:  # the end, without a verdict
                return False, f"ssh failed ({said or 'exit 255'})"
            else:  # the far shell ended oddly: no verdict on the rank, mlx.launch still watches
                log.warning("watching pid %s over ssh ended (exit %s): %s", self.pid,
                            proc.returncode, said)  # fmt: skip
                return None, None

    async def next_answer(self, seconds: float) -> None:
        """Wait (up to `seconds`) for the watcher's next line or its end."""
        self._heard.clear()
        if not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heard.wait(), seconds)

    async def stop(self) -> None:
        self._task.cancel()
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its session: ssh and any helper it started
        with contextlib.suppress(TimeoutError):  # a helper outside it may hold the pipe open
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)


class GroupSupervisor(EngineSupervisor):
    uses_standby = False

    def __init__(self, alias: str, group: GroupEntry, spec: EngineSpec) -> None:
        paths = settings.paths()
        self.alias = alias
        self.group = group
        self.name = f"group {alias}"
        self.launch_file = paths.group_file(alias, ".launch.json")
        super().__init__(
            spec,
            config_path=paths.group_file(alias, ".engine.json"),
            log_path=paths.group_log(alias),
        )
        self.ranks: list[dict[str, Any]] = self._fresh_ranks()
        self.lost: str | None = None  # the dead rank, named by host, for the reason
        self._ssh_exit: int | None = None  # a remote rank mlx.launch saw exit with ssh's code
        self._tasks: list[asyncio.Task[None]] = []
        self._watchers: dict[int, RankWatcher] = {}  # remote rank → its watcher, while serving
        self._woken = asyncio.Event()  # a watcher has news other than "alive"
        self._reported = asyncio.Event()  # a rank line came

    def _fresh_ranks(self) -> list[dict[str, Any]]:
        return [
            {"rank": r, "host": h, "pid": None, "state": "starting", "last_error": None}
            for r, h in enumerate(self.group.hosts)
        ]

    def _write_config(self) -> None:
        self.spec.parent_pid = None  # rank 0's parent is mlx.launch, not this gateway
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        group = group_doc(self.alias, self.group, self.spec)
        config = {**asdict(self.spec), "preload": [], "group": group}
        atomic_write_text(self.config_path, json.dumps(config, indent=2), mode=0o600)
        launch = {
            "hostfile": self.group.hostfile,
            "engine_config": str(self.config_path),
            "pythons": self.group.pythons,
            "addresses": self.group.addresses,
            "group": group,
        }
        atomic_write_text(self.launch_file, json.dumps(launch, indent=2), mode=0o600)

    def snapshot(self) -> dict[str, Any]:
        return {
            **super().snapshot(),
            "alias": self.alias,
            "parallel": self.group.parallel,
            "backend": self.group.backend,
            "hosts": list(self.group.hosts),
            "ranks": [dict(r) for r in self.ranks],
        }

    # --- the launcher -----------------------------------------------------------------------

    async def _spawn(self) -> asyncio.subprocess.Process:
        for task in self._tasks:
            task.cancel()
        self.ranks, self.lost, self._ssh_exit = self._fresh_ranks(), None, None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "local_ai.cluster.launch",
            "group",
            str(self.launch_file),
            stdin=subprocess.DEVNULL,
            # The ranks' output through mlx.launch: rank lines, its exit notes; all logged.
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.launch_file.parent,  # no file named "sh" that mlx.launch could run
            start_new_session=True,  # the launcher and its ranks, stopped together
        )
        self._proc = proc
        self.pid = proc.pid
        assert proc.stdout is not None and proc.stderr is not None
        self._tasks = [
            asyncio.create_task(self._read(stream), name=f"{self.name}-output")
            for stream in (proc.stdout, proc.stderr)
        ]
        return proc

    async def _read(self, stream: asyncio.StreamReader) -> None:
        with self.log_path.open("ab") as log_file:
            async for raw in stream:
                self._note(raw.decode("utf-8", "replace"))
                log_file.write(raw)
                log_file.flush()

    def _note(self, line: str) -> None:
        """A rank's pid from its rank line; the first rank mlx.launch saw end, named by host."""
        rank = parse_rank_line(line)
        if rank is not None and 0 <= rank["rank"] < len(self.ranks):
            state = "ready" if self.ready else "loaded"  # the line may come after /health
            self.ranks[rank["rank"]].update(pid=rank["pid"], state=state)
            self._reported.set()
            log.info("%s: rank %s on %s is pid %s", self.name, rank["rank"],
                     self.ranks[rank["rank"]]["host"], rank["pid"])  # fmt: skip
            return
        ended = _NODE_ENDED.search(line)
        if ended is None or self._stopping:
            return
        number = int(ended.group(1))
        if not 0 <= number < len(self.ranks):
            return
        what = ended.group(2).strip()
        rank_state = self.ranks[number]
        if rank_state["state"] not in ("dead", "unreachable"):
            rank_state.update(state="dead", last_error=what)
        if self.lost is None:
            self.lost = f"rank {number} on host {rank_state['host']}: {what}"
            if what == f"exited with code {SSH_FAILED}" and self._ssh(number) is not None:
                self._ssh_exit = number  # its host or the rank: _describe_end asks ssh

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> bool:
        """Ready: rank 0 answers /health and every rank said which pid it is (a rank's line
        travels through ssh and mlx.launch, so it may come after /health)."""
        if not await super()._wait_ready(proc):
            return False
        deadline = time.monotonic() + RANK_LINES_S
        while any(r["pid"] is None for r in self.ranks) and proc.returncode is None:
            if self.lost is not None:  # mlx.launch saw a rank end: that pid will not come
                log.warning("%s: %s before it was ready; stopping the other ranks", self.name,
                            self.lost)  # fmt: skip
                await self._terminate()
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [r["rank"] for r in self.ranks if r["pid"] is None]
                log.warning("%s: serving before ranks %s reported their pid", self.name, missing)
                break
            self._reported.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reported.wait(), min(left, 1.0))
        return proc.returncode is None

    async def _on_ready(self, proc: asyncio.subprocess.Process) -> None:
        for rank in self.ranks:
            rank["state"] = "ready"
        self._tasks.append(asyncio.create_task(self._watch(proc), name=f"{self.name}-watch"))

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """While the group serves: the first rank whose process is gone ends the group. Rank 0
        is checked every WATCH_S; a remote rank from when its pid is known, by its watcher."""
        while proc.returncode is None and not self._stopping:
            for rank in self.ranks:
                number, ssh = rank["rank"], self._ssh(rank["rank"])
                watcher = self._watchers.get(number)
                if (
                    ssh is not None
                    and rank["pid"] is not None
                    and (watcher is None or watcher.lapsed)
                ):
                    self._watchers[number] = RankWatcher(ssh, rank["pid"], self._woken)
            if self._check_ranks():
                log.warning("%s: %s; stopping the other ranks", self.name, self.lost)
                await self._terminate()
                return
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), WATCH_S)

    async def _stop_watchers(self) -> None:
        # One at a time: if stop() cancels this midway, it finds the rest still listed.
        while self._watchers:
            await self._watchers.popitem()[1].stop()

    def _check_ranks(self) -> bool:
        """Mark the ranks whose process is gone; True when one is (self.lost names it)."""
        for rank in self.ranks:
            pid = rank["pid"]
            if pid is None or rank["state"] in ("dead", "unreachable"):
                continue
            alive, why = self._alive(rank["rank"], pid)
            if alive is not False:
                continue
            rank["state"] = "unreachable" if why else "dead"
            rank["last_error"] = why or f"process {pid} is gone"
            if self.lost is None:
                self.lost = f"rank {rank['rank']} on host {rank['host']} (pid {pid}): " + (
                    why or "its process is gone"
                )
        return self.lost is not None

    def _ssh(self, rank: int) -> list[str] | None:
        """The ssh argv reaching `rank`'s host; None for rank 0, this machine."""
        return self.group.ssh[rank] if rank < len(self.group.ssh) else None

    def _alive(self, rank: int, pid: int) -> tuple[bool | None, str | None]:
        """(is the pid alive, why it could not be told); locally with os.kill, on another
        host its watcher's latest answer (None, None before it has one)."""
        if self._ssh(rank) is None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False, None
            except PermissionError:
                return True, None
            return True, None
        watcher = self._watchers.get(rank)
        return watcher.answer if watcher is not None and watcher.pid == pid else (None, None)

    async def _over_ssh(self, ssh: list[str], command: str) -> tuple[bool | None, str | None]:
        """(did `command` succeed on that host, why ssh itself failed); None: no ssh here."""
        try:
            check = await asyncio.create_subprocess_exec(
                *ssh,
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(check.communicate(), SSH_CHECK_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                check.kill()
            return False, f"no answer over ssh within {SSH_CHECK_TIMEOUT_S:.0f} s"
        except OSError:
            return None, None  # cannot run ssh here: not the rank's fault
        if check.returncode == 0:
            return True, None
        if check.returncode == SSH_FAILED:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            return False, f"ssh failed ({lines[-1] if lines else 'exit 255'})"
        return False, None

    async def _unreachable(self, rank: int) -> None:
        """A remote rank that exited with ssh's code: when its host does not answer ssh either,
        say so (mlx.launch's ssh runs with LogLevel=QUIET, so the log has no reason)."""
        ssh = self._ssh(rank)
        answered, why = await self._over_ssh(ssh, "true") if ssh else (None, None)
        if answered is False and why is not None:
            self.ranks[rank].update(state="unreachable", last_error=f"unreachable: {why}")
            self.lost = f"rank {rank} on host {self.ranks[rank]['host']}: unreachable, {why}"

    async def _describe_end(self, code: int, became_ready: bool) -> str:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)  # what the launcher left of its session
        # mlx.launch's last notes (which rank ended) may still be in the pipes: read them first.
        readers = [t for t in self._tasks if t.get_name().endswith("-output")]
        if readers:
            await asyncio.wait(readers, timeout=OUTPUT_DRAIN_S)
        if self.lost is None and not self._stopping:
            if not self._check_ranks():  # the survivors may still be winding down
                waits = [w.next_answer(WATCH_S + 1) for w in self._watchers.values()]
                await asyncio.gather(*waits)
                self._check_ranks()
        elif self._ssh_exit is not None and not self._stopping:
            await self._unreachable(self._ssh_exit)
        await self._stop_watchers()
        for task in self._tasks:
            task.cancel()
        for rank in self.ranks:
            if rank["state"] not in ("dead", "unreachable"):
                rank["state"] = "stopped"
        where = self.lost or f"mlx.launch {self.last_exit}"
        tail = "" if became_ready else f" before it was ready; see logs/{self.log_path.name}"
        return f"{self.name}: {where}{tail}"

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, None)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), wait)
                return
            except TimeoutError:
                continue

    async def stop(self) -> None:
        await super().stop()
        await self._stop_watchers()
        for task in self._tasks:
            task.cancel()
