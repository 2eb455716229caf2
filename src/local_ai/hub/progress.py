"""Download progress: a small sink interface and the bridge from huggingface_hub's tqdm hook
(`tqdm_class=`) to the sink. The Rich display for people is the CLI's (cli/progress.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from local_ai.util.failpoints import failpoint


class FetchProgress(Protocol):
    """Receives byte counts from concurrent download threads (implementations lock)."""

    def begin(self, label: str, files: Sequence[tuple[str, int]]) -> None:
        """`files`: (name, size) of what will be transferred now (cached files excluded)."""

    def advance(self, name: str, nbytes: int) -> None:
        """`nbytes` more of `name` arrived; negative when a failed attempt's bytes are dropped."""

    def file_done(self, name: str) -> None: ...

    def end(self) -> None: ...


class NullProgress:
    """For --json, quiet mode and non-interactive output."""

    def begin(self, label: str, files: Sequence[tuple[str, int]]) -> None:
        pass

    def advance(self, name: str, nbytes: int) -> None:
        pass

    def file_done(self, name: str) -> None:
        pass

    def end(self) -> None:
        pass


class RecordingProgress:
    """Keeps per-file byte counts; tests and benchmarks read them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.label = ""
        self.planned: dict[str, int] = {}
        self.received: dict[str, int] = {}
        self.done: list[str] = []
        self.ended = False

    def begin(self, label: str, files: Sequence[tuple[str, int]]) -> None:
        with self._lock:
            self.label = label
            self.planned = dict(files)

    def advance(self, name: str, nbytes: int) -> None:
        with self._lock:
            self.received[name] = self.received.get(name, 0) + nbytes

    def file_done(self, name: str) -> None:
        with self._lock:
            self.done.append(name)

    def end(self) -> None:
        self.ended = True


class _Counter:
    def __init__(self) -> None:
        self.value = 0


def tqdm_bridge(sink: FetchProgress, name: str) -> tuple[type[Any], Callable[[], int]]:
    """A class huggingface_hub can use as `tqdm_class` for one file's download, forwarding byte
    counts to `sink`, and a function returning how many bytes it has forwarded so far (to take
    them back when the attempt fails)."""
    counter = _Counter()

    class _Bridge:
        # Called as tqdm(desc=..., total=..., initial=..., unit=..., unit_scale=...).
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            initial = int(kwargs.get("initial") or 0)
            if initial:
                self.update(initial)

        def __enter__(self) -> _Bridge:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, n: float | None = 1) -> None:
            count = int(n or 0)
            counter.value += count
            sink.advance(name, count)
            failpoint("fetch.mid-file")  # bytes arrived; the blob is still *.incomplete

        def close(self) -> None:
            pass

        def __getattr__(self, attr: str) -> Callable[..., None]:
            # Other tqdm methods (refresh, set_description, ...) mean nothing here.
            return lambda *args, **kwargs: None

    return _Bridge, lambda: counter.value
