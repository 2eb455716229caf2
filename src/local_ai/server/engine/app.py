"""The engine's ASGI app: OpenAI chat completions and Anthropic messages through Omni's adapters,
served on a Unix socket that only the gateway talks to.

Each generation runs its (synchronous) Omni adapter in a worker thread; tokens come from the
scheduler thread. The event loop only moves bytes, so health and status answer at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from local_ai import __version__
from local_ai.server.aliases import load_alias_map
from local_ai.server.asgi import (
    BodyTooLarge,
    ClientGone,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    run_until_disconnect,
    send_json,
    start_stream,
    wait_disconnect,
)
from local_ai.server.compat import (
    Api,
    context_error,
    error_body,
    normalize_anthropic,
    normalize_openai,
)
from local_ai.server.engine import diskcache
from local_ai.server.engine.diskcache import DiskPromptCache
from local_ai.server.engine.generator import (
    ContextLengthExceeded,
    Limits,
    LocalAnthropicAdapter,
    LocalOpenAIAdapter,
    ScheduledChatGenerator,
)
from local_ai.server.engine.group import Group
from local_ai.server.engine.loaded import LoadedModel
from local_ai.server.engine.models import ModelRegistry
from local_ai.server.engine.scheduler import (
    DEFAULT_MAX_BATCH,
    AdmissionRefused,
    GenerationCancelled,
    Scheduler,
)
from local_ai.server.groupspec import GroupSpec

log = logging.getLogger("local_ai.engine")

MAX_BODY = 1024 * 1024 * 1024
_END = object()
_ADMITTED = object()
_GONE = object()


@dataclass
class EngineConfig:
    socket: str
    aliases_file: str
    max_loaded_models: int = 2
    idle_ttl_s: int = 1800
    prompt_cache: bool = True
    preload: list[str] = field(default_factory=list)
    max_batch_size: int = DEFAULT_MAX_BATCH
    prompt_cache_dir: str | None = None
    prompt_cache_disk_mb: int = 0
    debug: bool = False
    parent_pid: int | None = None
    group: dict[str, Any] | None = None  # a sharded engine's rank 0 (engine.group.GroupSpec)

    @classmethod
    def read(cls, path: Path) -> EngineConfig:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**data)


class EngineApp:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.group: Group | None = None
        max_batch, disk = config.max_batch_size, _disk_cache(config)
        if config.group is not None:
            self.group = Group(GroupSpec.parse(config.group, "the engine config's group"))
            # Every rank batches alike; the other ranks keep no disk cache to match.
            max_batch, disk = self.group.spec.max_batch_size, None
        self.scheduler = Scheduler(max_batch=max_batch, disk_cache=disk)
        self._aliases_mtime = -1.0
        self._paths: frozenset[str] = frozenset()  # the model directories it may load
        self._reload_aliases()
        self.registry = ModelRegistry(
            self.scheduler,
            max_loaded=config.max_loaded_models,
            idle_ttl_s=config.idle_ttl_s,
        )
        if self.group is not None:
            self.registry.load_weights = self.group.load
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="req")
        self.started = time.time()
        self.requests = 0
        self._background: list[asyncio.Future[None]] = []

    # --- model paths -----------------------------------------------------------------------

    def _reload_aliases(self) -> None:
        path = Path(self.config.aliases_file)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            mtime = 0.0
        if mtime == self._aliases_mtime:
            return
        alias_map = load_alias_map(path)
        self._paths = frozenset(alias_map.paths())
        self._aliases_mtime = mtime

    def allowed(self, model_path: str) -> bool:
        """Only directories the alias map names are ever loaded (defence in depth); a sharded
        engine serves its group's model only."""
        if self.group is not None:
            return model_path == self.group.spec.model_paths[0]
        self._reload_aliases()
        return model_path in self._paths

    # --- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        method = scope["method"]
        try:
            if method == "GET" and path == "/health":
                if self.group is not None and not self.group.ready:
                    await send_json(send, 503, {"status": "joining", "pid": os.getpid()})
                    return
                await send_json(
                    send, 200, {"status": "ready", "pid": os.getpid(), "version": __version__}
                )
            elif method == "GET" and path == "/status":
                await send_json(send, 200, self.status())
            elif method == "POST" and path == "/load":
                await self._load(receive, send)
            elif method == "POST" and path == "/prompt-cache/clear":
                await send_json(send, 200, await self._clear_prompt_cache())
            elif method == "POST" and path == "/v1/chat/completions":
                await self._generate(scope, receive, send, "openai")
            elif method == "POST" and path == "/anthropic/v1/messages":
                await self._generate(scope, receive, send, "anthropic")
            elif method == "POST" and path == "/anthropic/v1/messages/count_tokens":
                await self._count_tokens(scope, receive, send)
            else:
                await send_json(send, 404, error_body("openai", 404, f"no route {method} {path}"))
        except ClientGone:
            pass

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.scheduler.start()
                self._secure_socket()
                if self.group is not None:
                    self.scheduler.call(self._join_group).add_done_callback(_joined)
                self._background = [
                    asyncio.ensure_future(self._preload(path)) for path in self.config.preload
                ]
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.scheduler.stop()
                self.pool.shutdown(wait=False, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _join_group(self) -> None:
        """In the MLX thread: form the group, load this rank's share, pass the barrier."""
        assert self.group is not None
        self.group.init()
        self.registry.pin(self.group.spec.model_paths[0])
        self.group.announce()
        self.scheduler.group = self.group

    def _secure_socket(self) -> None:
        with contextlib.suppress(OSError):
            Path(self.config.socket).chmod(0o600)  # uvicorn creates it 0666

    async def _preload(self, path: str) -> None:
        if not self.allowed(path):
            log.warning("not preloading %s: not in the alias map", path)
            return
        try:
            loaded = await self.registry.acquire(path)
        except Exception as exc:
            log.error("preloading %s failed: %s", path, exc)
            return
        self.registry.release(loaded)

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "models": self.registry.status(),
            "max_loaded_models": self.registry.max_loaded,
            "idle_ttl_s": self.registry.idle_ttl_s,
            "errors": dict(self.registry.last_error),
            "active_generations": self.scheduler.active,
            "completed_generations": self.scheduler.completed,
            "batch": self.scheduler.batch_status(),
            "requests": self.requests,
            "model_loads": {p: dict(f) for p, f in list(self.registry.loads.items())},
            **_mlx_memory(),
            **({"group": self.group.status()} if self.group is not None else {}),
        }

    async def _clear_prompt_cache(self) -> dict[str, int]:
        if not self.config.prompt_cache_dir:
            return {"files": 0, "bytes": 0}
        directory = Path(self.config.prompt_cache_dir)
        # On the scheduler thread, between steps: no save or load of a cache file is under way.
        return await asyncio.wrap_future(self.scheduler.call(lambda: diskcache.clear(directory)))

    async def _load(self, receive: Receive, send: Send) -> None:
        body = json.loads(await read_body(receive, MAX_BODY) or b"{}")
        path = str(body.get("path", ""))
        if not self.allowed(path):
            await send_json(send, 404, {"error": f"{path} is not in the alias map"})
            return
        try:
            loaded = await self.registry.acquire(path)
        except Exception as exc:
            await send_json(send, 500, {"error": f"{type(exc).__name__}: {exc}"})
            return
        self.registry.release(loaded)
        await send_json(send, 200, {"loaded": path, "memory_bytes": loaded.memory_bytes})

    # --- generation ------------------------------------------------------------------------

    async def _parse(
        self, scope: Scope, receive: Receive, send: Send, api: Api
    ) -> tuple[Any, str, Limits] | None:
        """Validated request, model path and limits; None when an error was already sent."""
        try:
            body = json.loads(await read_body(receive, MAX_BODY))
        except BodyTooLarge:
            await send_json(send, 413, error_body(api, 413, "request body too large"))
            return None
        except ValueError:
            await send_json(send, 400, error_body(api, 400, "the body is not valid JSON"))
            return None
        if not isinstance(body, dict):
            await send_json(send, 400, error_body(api, 400, "the body must be a JSON object"))
            return None
        path = str(body.get("model", ""))
        if not self.allowed(path):
            await send_json(send, 404, error_body(api, 404, "unknown model"))
            return None
        alias = header(scope, b"x-local-ai-alias") or path
        limits = Limits(
            context=int(header(scope, b"x-local-ai-context") or 32768),
            max_output_tokens=int(header(scope, b"x-local-ai-max-output") or 8192),
            prefix_cache=self.config.prompt_cache,
        )
        try:
            if api == "openai":
                from mlx_omni_server.chat.openai.schema import ChatCompletionRequest

                request: Any = ChatCompletionRequest.model_validate(normalize_openai(body))
            else:
                from mlx_omni_server.chat.anthropic.anthropic_schema import MessagesRequest

                normalized = normalize_anthropic(body)
                normalized.setdefault("max_tokens", limits.max_output_tokens)
                request = MessagesRequest.model_validate(normalized)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
            )
            await send_json(send, 400, error_body(api, 400, f"invalid request: {problems}"))
            return None
        request.model = alias
        return request, path, limits

    async def _acquire(self, send: Send, api: Api, path: str) -> LoadedModel | None:
        try:
            return await self.registry.acquire(path)
        except Exception as exc:
            log.error("loading %s failed: %s", path, exc)
            await send_json(
                send, 500, error_body(api, 500, f"the model could not be loaded: {exc}")
            )
            return None

    async def _count_tokens(self, scope: Scope, receive: Receive, send: Send) -> None:
        parsed = await self._parse(scope, receive, send, "anthropic")
        if parsed is None:
            return
        request, path, limits = parsed
        loop = asyncio.get_running_loop()

        def count() -> int:
            bundle = self.registry.tokenizer(path)
            holder = _TokenizerOnly(bundle.tokenizer, bundle.model_type)
            gen = ScheduledChatGenerator(holder, self.scheduler, limits)  # type: ignore[arg-type]
            return LocalAnthropicAdapter(wrapper=gen).count_tokens(request)

        try:
            tokens = await loop.run_in_executor(self.pool, count)
        except Exception as exc:
            log.exception("count_tokens failed")
            await send_json(send, 500, error_body("anthropic", 500, f"{exc}"))
            return
        await send_json(send, 200, {"input_tokens": tokens})

    async def _generate(self, scope: Scope, receive: Receive, send: Send, api: Api) -> None:
        parsed = await self._parse(scope, receive, send, api)
        if parsed is None:
            return
        request, path, limits = parsed
        self.requests += 1
        loaded = await self._acquire(send, api, path)
        if loaded is None:
            return
        cancel = threading.Event()
        try:
            gen = ScheduledChatGenerator(loaded, self.scheduler, limits, cancel)
            if request.stream:
                await self._stream(receive, send, api, request, gen, cancel)
            else:
                await self._complete(receive, send, api, request, gen, cancel)
        finally:
            cancel.set()  # a no-op after completion; stops the job if we got here early
            self.registry.release(loaded)

    async def _complete(
        self,
        receive: Receive,
        send: Send,
        api: Api,
        request: Any,
        gen: ScheduledChatGenerator,
        cancel: threading.Event,
    ) -> None:
        loop = asyncio.get_running_loop()

        def work() -> dict[str, Any]:
            if api == "openai":
                return LocalOpenAIAdapter(wrapper=gen).complete(request)
            return LocalAnthropicAdapter(wrapper=gen).complete(request)

        future = loop.run_in_executor(self.pool, work)
        try:
            finished = await run_until_disconnect(receive, asyncio.shield(future))
        except BaseException:
            finished = True
        if not finished:
            cancel.set()
            return
        try:
            result = await future
        except BaseException as exc:
            await self._send_error(send, api, exc)
            return
        await send_json(send, 200, result)

    async def _send_error(self, send: Send, api: Api, exc: BaseException) -> None:
        # Omni's non-streaming path wraps what the generator raised.
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ContextLengthExceeded | AdmissionRefused):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ContextLengthExceeded):
            await send_json(send, 400, context_error(api, cause.prompt_tokens, cause.context))
            return
        if isinstance(cause, AdmissionRefused):
            retry = [(b"retry-after", str(cause.retry_after).encode())]
            await send_json(send, 503, error_body(api, 503, str(cause)), retry)
            return
        if isinstance(exc, GenerationCancelled):
            return
        if isinstance(exc, ValueError | TypeError):
            await send_json(send, 400, error_body(api, 400, str(exc)))
            return
        log.error("generation failed: %s", exc)
        await send_json(send, 500, error_body(api, 500, f"generation failed: {exc}"))

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        api: Api,
        request: Any,
        gen: ScheduledChatGenerator,
        cancel: threading.Event,
    ) -> None:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()

        def push(item: Any) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        def produce() -> None:
            try:
                # The first item comes once the prompt passed its checks: then the 200 is sent.
                if api == "openai":
                    for i, chunk in enumerate(LocalOpenAIAdapter(wrapper=gen).stream(request)):
                        if i == 0:
                            push(_ADMITTED)
                        push(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
                    push(b"data: [DONE]\n\n")
                else:
                    events = LocalAnthropicAdapter(wrapper=gen).stream_events(request)
                    for i, event in enumerate(events):
                        if i == 0:
                            push(_ADMITTED)
                        payload = json.dumps(event, ensure_ascii=False)
                        push(f"event: {event['type']}\ndata: {payload}\n\n".encode())
            except BaseException as exc:
                push(exc)
            finally:
                push(_END)

        producer = loop.run_in_executor(self.pool, produce)

        async def watch() -> None:
            try:
                await wait_disconnect(receive)
            finally:
                items.put_nowait(_GONE)  # also when reading failed; harmless once done

        # One watcher for the whole stream, not a task per token: the loop's work per token is
        # on the cores MLX decodes with.
        watcher = asyncio.ensure_future(watch())
        started = False
        try:
            while True:
                # Chunks that queued up while the loop was busy go out in one write.
                ready = [await items.get()]
                while not items.empty():
                    ready.append(items.get_nowait())
                for item in _coalesce(ready):
                    if item is _GONE:
                        cancel.set()  # the client went away: stop generating
                        return
                    if item is _END:
                        return
                    if item is _ADMITTED:
                        await start_stream(send, 200)
                        started = True
                    elif isinstance(item, BaseException):
                        if not started:
                            await self._send_error(send, api, item)
                            return
                        if not isinstance(item, GenerationCancelled):
                            log.error("stream failed: %s", item)
                            body = _stream_error(api, item)
                            await send(
                                {"type": "http.response.body", "body": body, "more_body": True}
                            )
                    else:
                        await send({"type": "http.response.body", "body": item, "more_body": True})
        finally:
            watcher.cancel()
            cancel.set()
            if started:
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(producer), timeout=0.1)


def _coalesce(items: list[Any]) -> list[Any]:
    """`items` with each run of consecutive byte chunks joined into one."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += item
        else:
            out.append(item)
    return out


def _joined(future: concurrent.futures.Future[Any]) -> None:
    """A rank 0 that cannot join serves nothing: exit, so the launcher ends the other ranks."""
    exc = future.exception()
    if exc is not None:
        log.error("rank 0 could not join the group: %s: %s", type(exc).__name__, exc)
        os._exit(2)


def _disk_cache(config: EngineConfig) -> DiskPromptCache | None:
    if not (config.prompt_cache and config.prompt_cache_dir and config.prompt_cache_disk_mb > 0):
        return None
    return DiskPromptCache(Path(config.prompt_cache_dir), config.prompt_cache_disk_mb * 1024 * 1024)


def _stream_error(api: Api, exc: BaseException) -> bytes:
    body = error_body(api, 500, f"generation failed: {exc}")
    if api == "anthropic":
        return f"event: error\ndata: {json.dumps(body)}\n\n".encode()
    return f"data: {json.dumps(body)}\n\n".encode()


class _TokenizerOnly:
    """Stands in for a LoadedModel when only the tokenizer is needed (count_tokens)."""

    def __init__(self, tokenizer: Any, model_type: str) -> None:
        from mlx_omni_server.chat.mlx.model_types import MLXModel
        from mlx_omni_server.chat.mlx.tools.chat_template import ChatTemplate

        self.tokenizer = tokenizer
        self.model_type = model_type
        self.mlx_model = MLXModel(
            model_id="count-tokens",
            adapter_path=None,
            draft_model_id=None,
            model=None,
            tokenizer=tokenizer,
            chat_template=ChatTemplate(model_type, tokenizer),
        )


def _mlx_memory() -> dict[str, int]:
    """MLX's own accounting (unified memory on a Mac): in use now and the peak since start."""
    import mlx.core as mx

    try:
        return {
            "active_memory_bytes": mx.get_active_memory(),
            "peak_memory_bytes": mx.get_peak_memory(),
            "cache_memory_bytes": mx.get_cache_memory(),
        }
    except (AttributeError, RuntimeError):
        return {}
