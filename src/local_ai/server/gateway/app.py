"""The gateway: our ASGI app in front of the engine.

Every request passes the Host allowlist (DNS rebinding), the Origin check on state-changing
methods, CORS for configured origins only, the body limit and, on the API paths, the API key.
Generation requests name an alias; the gateway swaps it for the model directory, refuses fields
that would make the engine load files, waits for one of `max_active` engine slots (or answers
503 when `max_queued_requests` already wait) and streams the engine's answer through unbuffered.
A client that disconnects cancels its engine request, which stops the generation.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from local_ai import __version__, settings
from local_ai.manifest.models import EngineSettings
from local_ai.manifest.serving import engine_record
from local_ai.server import web
from local_ai.server.aliases import AliasEntry, AliasMap, load_alias_map
from local_ai.server.asgi import (
    BodyTooLarge,
    ClientGone,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    run_until_disconnect,
    send_bytes,
    send_json,
    start_stream,
)
from local_ai.server.compat import (
    Api,
    api_of,
    error_body,
    forbidden_fields,
    request_problem,
)
from local_ai.server.config import ServerConfig
from local_ai.server.engine import diskcache
from local_ai.server.gateway import responses
from local_ai.server.gateway.group import GroupSupervisor
from local_ai.server.gateway.metrics import (
    Exchange,
    GatewayMetrics,
    ResponseTap,
    client_of,
    endpoint_of,
)
from local_ai.server.gateway.supervisor import EngineSpec, EngineSupervisor, unix_socket_path

log = logging.getLogger("local_ai.gateway")

ENGINE_WAIT_S = 60.0  # how long a request waits for a (re)starting engine
RETRY_AFTER_S = 2
GENERATION_PATHS = {
    "/v1/chat/completions": "/v1/chat/completions",
    "/anthropic/v1/messages": "/anthropic/v1/messages",
    "/anthropic/v1/messages/count_tokens": "/anthropic/v1/messages/count_tokens",
}
UNSUPPORTED_PATHS = {"/v1/completions", "/v1/embeddings"}
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _send_events(send: Send, events: list[dict[str, Any]]) -> None:
    if events:
        body = b"".join(responses.sse(e) for e in events)
        await send({"type": "http.response.body", "body": body, "more_body": True})


def exchange(scope: Scope) -> Exchange:
    """The metrics record of the request in `scope` (set when the request arrived)."""
    ex: Exchange = scope["local_ai.exchange"]
    return ex


class Gateway:
    def __init__(
        self,
        config: ServerConfig,
        *,
        aliases_file: Path,
        token: str,
        supervisor: EngineSupervisor,
    ) -> None:
        self.config = config
        self.aliases_file = aliases_file
        self.alias_map: AliasMap = load_alias_map(aliases_file)
        self.token = token
        self.supervisor = supervisor
        self.groups: dict[str, GroupSupervisor] = {}  # sharded aliases, each served by a group
        self.allowed_hosts = config.allowed_hosts()
        self.allowed_origins = config.allowed_origins()
        self.cors_origins = frozenset(config.cors_origins)
        self.started = time.time()
        self.active = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.counters = {"requests": 0, "generations": 0, "rejected_busy": 0, "cancelled": 0}
        self.metrics = GatewayMetrics()
        self.responses = responses.ResponseStore()
        self._background: asyncio.Future[None] | None = None
        # The engine settings it runs with: from the manifest at start, then from restart-engine.
        self.engine_settings: dict[str, Any] = dict(config.settings.get("engine", {}))

    # --- ASGI entry -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self.counters["requests"] += 1
        ex = Exchange(endpoint_of(scope["path"]), client_of(header(scope, b"user-agent")))
        scope["local_ai.exchange"] = ex

        async def noted(message: Any) -> None:
            if message["type"] == "http.response.start":
                ex.status = int(message["status"])
            await send(message)

        try:
            await self._http(scope, receive, noted)
        except ClientGone:
            self.counters["cancelled"] += 1
        finally:
            self.metrics.record(ex)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.supervisor.start()
                await self._sync_groups()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.gather(
                    self.supervisor.stop(), *(g.stop() for g in self.groups.values())
                )
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- checks -----------------------------------------------------------------------------

    def _cors_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        origin = header(scope, b"origin")
        if origin and origin in self.cors_origins:
            return [(b"access-control-allow-origin", origin.encode()), (b"vary", b"origin")]
        return []

    def _api_key_ok(self, scope: Scope) -> bool:
        key = self.config.api_key
        if not key:
            return True
        offered = header(scope, b"x-api-key")
        auth = header(scope, b"authorization")
        if offered is None and auth and auth.lower().startswith("bearer "):
            offered = auth[7:].strip()
        return offered is not None and hmac.compare_digest(offered.encode(), key.encode())

    def _admin_ok(self, scope: Scope) -> bool:
        auth = header(scope, b"authorization") or ""
        offered = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        return bool(offered) and hmac.compare_digest(offered.encode(), self.token.encode())

    async def _error(
        self, scope: Scope, send: Send, status: int, message: str, **extra: Any
    ) -> None:
        path = scope["path"]
        headers = [*self._cors_headers(scope), *extra.pop("headers", [])]
        if path.startswith(("/v1/", "/anthropic/")):
            body = error_body(
                api_of(path), status, message, code=extra.get("code"), param=extra.get("param")
            )
        else:
            body = {"error": message}
        await send_json(send, status, body, headers, head=scope["method"] == "HEAD")

    async def _key_missing(self, scope: Scope, send: Send) -> None:
        await self._error(
            scope,
            send,
            401,
            "invalid or missing API key (send it as Bearer token or x-api-key)",
            headers=[(b"www-authenticate", b"Bearer")],
        )

    # --- routing ----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        path = scope["path"]
        host = (header(scope, b"host") or "").strip().lower()
        if not host or host not in self.allowed_hosts:
            await self._error(scope, send, 403, f"host {host!r} is not allowed")
            return
        origin = header(scope, b"origin")
        if method == "OPTIONS":
            await self._preflight(scope, send, origin)
            return
        if method in STATE_CHANGING and origin is not None and origin not in self.allowed_origins:
            await self._error(scope, send, 403, f"origin {origin!r} is not allowed")
            return
        is_api = path.startswith(("/v1/", "/anthropic/v1/")) or path in ("/v1", "/anthropic/v1")
        if is_api and not self._api_key_ok(scope):
            await self._key_missing(scope, send)
            return
        if method in ("GET", "HEAD"):
            await self._get(scope, send, path)
        elif method == "POST":
            await self._post(scope, receive, send, path)
        else:
            await self._error(scope, send, 405, f"method {method} is not allowed")

    async def _preflight(self, scope: Scope, send: Send, origin: str | None) -> None:
        if not origin or origin not in self.cors_origins:
            await self._error(scope, send, 403, "CORS is not enabled for this origin")
            return
        requested = header(scope, b"access-control-request-headers") or ""
        headers = [
            (b"access-control-allow-origin", origin.encode()),
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-allow-headers", requested.encode() or b"content-type"),
            (b"access-control-max-age", b"600"),
            (b"vary", b"origin"),
        ]
        await send_bytes(send, 204, b"", b"text/plain", headers)

    async def _get(self, scope: Scope, send: Send, path: str) -> None:
        head = scope["method"] == "HEAD"
        cors = self._cors_headers(scope)
        page_file = web.asset(path)
        if page_file is not None:
            content, content_type = page_file
            await send_bytes(
                send, 200, content, content_type, [*SECURITY_HEADERS, *web.headers()], head=head
            )
        elif path == "/health":
            state = self.supervisor.state
            status = {"ready": "ready", "error": "error"}.get(state, "loading")
            body: dict[str, Any] = {
                "status": status,
                "engine": state,
                "reason": self.supervisor.reason,
                # A group that is down answers 503 for its alias only; the others keep serving.
                "groups": {
                    a: {"state": g.state, "reason": g.reason} for a, g in self.groups.items()
                },
            }
            await send_json(send, 200 if status == "ready" else 503, body, cors, head=head)
        elif path == "/api/status":
            admin, key_ok = self._admin_ok(scope), self._api_key_ok(scope)
            report = await self.status(admin=admin, detail=key_ok)
            await send_json(send, 200, report, head=head)
        elif path == "/metrics":
            await self._metrics(scope, send, head=head)
        elif path == "/v1/models":
            data = [self._openai_model(a, e) for a, e in self.alias_map.models.items()]
            await send_json(send, 200, {"object": "list", "data": data}, cors, head=head)
        elif path.startswith("/v1/models/"):
            alias = path.removeprefix("/v1/models/")
            entry = self.alias_map.models.get(alias)
            if entry is None:
                await self._unknown_model(scope, send, alias)
                return
            await send_json(send, 200, self._openai_model(alias, entry), cors, head=head)
        elif path == "/anthropic/v1/models":
            data = [self._anthropic_model(a, e) for a, e in self.alias_map.models.items()]
            listing: dict[str, Any] = {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
            await send_json(send, 200, listing, cors, head=head)
        elif path.startswith("/anthropic/v1/models/"):
            alias = path.removeprefix("/anthropic/v1/models/")
            entry = self.alias_map.models.get(alias)
            if entry is None:
                await self._unknown_model(scope, send, alias)
                return
            await send_json(send, 200, self._anthropic_model(alias, entry), cors, head=head)
        else:
            await self._error(scope, send, 404, f"no route GET {path}")

    async def _post(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if path.startswith("/api/admin/"):
            await self._admin(scope, receive, send, path)
            return
        if path == "/api/load":
            await self._load(scope, receive, send)
            return
        if path == "/v1/responses":
            await self._responses(scope, receive, send)
            return
        if path in UNSUPPORTED_PATHS:
            await self._error(scope, send, 404, f"{path} is not served; use /v1/chat/completions")
            return
        if path not in GENERATION_PATHS:
            await self._error(scope, send, 404, f"no route POST {path}")
            return
        api = api_of(path)
        body = await self._json_body(scope, receive, send)
        if body is None:
            return
        resolved = await self._resolve(scope, send, body, body)
        if resolved is None:
            return
        model, entry = resolved
        strip_usage = False
        if api == "openai" and body.get("stream"):
            # The usage chunk carries the token figures; the client gets it only if it asked.
            options = body.get("stream_options")
            options = options if isinstance(options, dict) else {}
            strip_usage = not options.get("include_usage")
            body["stream_options"] = {**options, "include_usage": True}
        payload = json.dumps(body).encode()
        if path.endswith("/count_tokens"):
            await self._forward(scope, send, api, path, payload, model, entry)
            return
        self.counters["generations"] += 1
        exchange(scope).tap = ResponseTap(
            streaming=bool(body.get("stream")), strip_usage=strip_usage
        )
        completed = await run_until_disconnect(
            receive,
            self._generate(
                scope, send, lambda: self._forward(scope, send, api, path, payload, model, entry)
            ),
        )
        if not completed:
            self.counters["cancelled"] += 1

    async def _resolve(
        self, scope: Scope, send: Send, body: dict[str, Any], engine_body: dict[str, Any]
    ) -> tuple[str, AliasEntry] | None:
        """The alias a request names and its entry, after the checks every generation passes
        (`engine_body`, what goes to the engine, gets the model's path); None: refused."""
        model = body.get("model") or self.alias_map.default_alias
        if not isinstance(model, str) or model not in self.alias_map.models:
            await self._unknown_model(scope, send, str(model))
            return None
        refused = forbidden_fields(body)
        if refused:
            await self._error(
                scope, send, 400, f"field(s) not accepted by this server: {', '.join(refused)}"
            )
            return None
        problem = request_problem(engine_body)
        if problem:
            field, message = problem
            await self._error(scope, send, 400, message, code="invalid_value", param=field)
            return None
        entry = self.alias_map.models[model]
        engine_body["model"] = entry.path
        exchange(scope).alias = model
        return model, entry

    async def _json_body(self, scope: Scope, receive: Receive, send: Send) -> Any:
        limit = self.config.max_body_bytes
        length = header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._error(scope, send, 413, f"request body larger than {limit} bytes")
            return None
        content_type = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            await self._error(scope, send, 415, "send the body as application/json")
            return None
        try:
            raw = await read_body(receive, limit)
        except BodyTooLarge:
            await self._error(scope, send, 413, f"request body larger than {limit} bytes")
            return None
        try:
            # NaN and Infinity are not JSON (Python's parser accepts them): refuse them here.
            body = json.loads(raw, parse_constant=_reject_constant)
        except ValueError:
            await self._error(scope, send, 400, "the body is not valid JSON")
            return None
        if not isinstance(body, dict):
            await self._error(scope, send, 400, "the body must be a JSON object")
            return None
        return body

    async def _unknown_model(self, scope: Scope, send: Send, model: str) -> None:
        aliases = ", ".join(self.alias_map.models) or "none (run `local-ai apply`)"
        await self._error(
            scope,
            send,
            404,
            f"model {model!r} is not served here; use one of the aliases: {aliases}",
            code="model_not_found",
        )

    # --- generation -------------------------------------------------------------------------

    async def _acquire_slot(self) -> bool:
        if self.active < self.config.max_active and not self._waiters:
            self.active += 1
            return True
        if len(self._waiters) >= self.config.engine.max_queued_requests:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # the slot was handed to us as we were cancelled
            raise
        return True

    def _release_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot over; `active` is unchanged
                return
        self.active -= 1

    async def _generate(
        self, scope: Scope, send: Send, work: Callable[[], Awaitable[None]]
    ) -> None:
        """Run `work` (a generation) in one of the engine slots, or answer 503 when none is free
        and the queue is full."""
        if not await self._acquire_slot():
            self.counters["rejected_busy"] += 1
            exchange(scope).unavailable = "busy"
            await self._error(
                scope,
                send,
                503,
                f"the server is busy ({self.active} generating, "
                f"{len(self._waiters)} waiting); retry shortly",
                headers=[(b"retry-after", str(RETRY_AFTER_S).encode())],
            )
            return
        try:
            await work()
        finally:
            self._release_slot()

    def supervisor_for(self, alias: str) -> EngineSupervisor:
        """The engine that serves `alias`: its group when it is sharded, else the one engine."""
        return self.groups.get(alias) or self.supervisor

    async def _wait_engine(self, supervisor: EngineSupervisor) -> bool:
        """Wait for a starting engine; a group that lost a rank is answered 503 at once."""
        if isinstance(supervisor, GroupSupervisor) and supervisor.state in ("error", "restarting"):
            return supervisor.ready
        return await supervisor.wait_ready(ENGINE_WAIT_S)

    async def _sync_groups(self) -> None:
        """One GroupSupervisor per sharded alias of the map: started when new, restarted when
        what it serves changed, stopped when gone; untouched otherwise."""
        wanted = {a: e for a, e in self.alias_map.models.items() if e.group is not None}
        for alias, group in list(self.groups.items()):
            entry = wanted.get(alias)
            if (
                entry is None
                or entry.group != group.group
                or entry.path != group.group.model_paths[0]
            ):
                del self.groups[alias]
                log.info("stopping %s (no longer served as it is)", group.name)
                await group.stop()
        for alias, entry in wanted.items():
            if alias in self.groups or entry.group is None:
                continue
            paths = settings.paths()
            engine = self.config.engine
            spec = EngineSpec(
                socket=str(unix_socket_path(paths.group_file(alias, ".sock"), paths.root)),
                aliases_file=str(self.aliases_file),
                max_loaded_models=1,
                idle_ttl_s=0,  # a group holds its one model for as long as it runs
                prompt_cache=engine.prompt_cache,
                max_batch_size=engine.max_batch_size,
                debug=settings.debug(),
            )
            group = GroupSupervisor(alias, entry.group, spec)
            self.groups[alias] = group
            log.info("starting %s on %s", group.name, ", ".join(entry.group.hosts))
            group.start()

    async def _engine_send(
        self, scope: Scope, send: Send, path: str, payload: bytes, alias: str, entry: AliasEntry
    ) -> httpx.Response | None:
        """The engine's streamed answer to `payload` at `path`; None when it is not ready or
        went away (a 503 was sent)."""
        supervisor = self.supervisor_for(alias)
        if not await self._wait_engine(supervisor):
            exchange(scope).unavailable = "engine_not_ready"
            reason = supervisor.reason or f"the {supervisor.name} is starting"
            await self._error(
                scope,
                send,
                503,
                f"the {supervisor.name} is not ready: {reason}",
                headers=[(b"retry-after", str(RETRY_AFTER_S).encode())],
            )
            return None
        headers = {
            "content-type": "application/json",
            "x-local-ai-alias": alias,
            "x-local-ai-context": str(entry.context),
            "x-local-ai-max-output": str(entry.max_output_tokens),
        }
        client = supervisor.client
        request = client.build_request("POST", path, content=payload, headers=headers)
        try:
            return await client.send(request, stream=True)
        except httpx.TransportError as exc:
            exchange(scope).unavailable = "engine_restarting"
            await self._error(
                scope,
                send,
                503,
                f"the engine is restarting ({type(exc).__name__}); retry shortly",
                headers=[(b"retry-after", b"1")],
            )
            return None

    async def _forward(
        self,
        scope: Scope,
        send: Send,
        api: Api,
        path: str,
        payload: bytes,
        alias: str,
        entry: AliasEntry,
    ) -> None:
        response = await self._engine_send(
            scope, send, GENERATION_PATHS[path], payload, alias, entry
        )
        if response is None:
            return
        try:
            out = [
                (b"content-type", response.headers.get("content-type", "application/json").encode())
            ]
            for name in ("cache-control", "content-length", "x-accel-buffering", "retry-after"):
                if name in response.headers:
                    out.append((name.encode(), response.headers[name].encode()))
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [*out, *self._cors_headers(scope)],
                }
            )
            tap = exchange(scope).tap if response.status_code == 200 else None
            try:
                async for chunk in response.aiter_raw():
                    data = tap.feed(chunk) if tap is not None else chunk
                    if data:
                        await send({"type": "http.response.body", "body": data, "more_body": True})
                rest = tap.finish() if tap is not None else b""
                if rest:
                    await send({"type": "http.response.body", "body": rest, "more_body": True})
            except httpx.TransportError as exc:
                exchange(scope).unavailable = "engine_lost"
                log.warning("engine connection lost mid-response: %s", exc)
                if "event-stream" in response.headers.get("content-type", ""):
                    body = error_body(api, 503, "the engine stopped during generation")
                    event = b"event: error\n" if api == "anthropic" else b""
                    await send(
                        {
                            "type": "http.response.body",
                            "body": event + b"data: " + json.dumps(body).encode() + b"\n\n",
                            "more_body": True,
                        }
                    )
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    async def _responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/responses: translated to a streamed chat completion on the engine."""
        body = await self._json_body(scope, receive, send)
        if body is None:
            return
        try:
            chat, conversation = responses.to_chat(body, self.responses)
        except responses.ResponsesError as exc:
            await self._error(scope, send, 400, str(exc), code="invalid_value", param=exc.param)
            return
        resolved = await self._resolve(scope, send, body, chat)
        if resolved is None:
            return
        alias, entry = resolved
        self.counters["generations"] += 1
        exchange(scope).tap = ResponseTap(streaming=True, keep=True)
        builder = responses.ResponseBuilder(alias, body)
        payload = json.dumps(chat).encode()

        async def work() -> None:
            await self._respond(scope, send, payload, entry, builder, bool(body.get("stream")))
            if builder.status in ("completed", "incomplete") and body.get("store") is not False:
                self.responses.put(builder.id, [*conversation, *builder.messages()])

        if not await run_until_disconnect(receive, self._generate(scope, send, work)):
            self.counters["cancelled"] += 1

    async def _respond(
        self,
        scope: Scope,
        send: Send,
        payload: bytes,
        entry: AliasEntry,
        builder: responses.ResponseBuilder,
        stream: bool,
    ) -> None:
        response = await self._engine_send(
            scope, send, "/v1/chat/completions", payload, builder.alias, entry
        )
        if response is None:
            return
        tap = exchange(scope).tap
        assert tap is not None
        try:
            if response.status_code != 200:  # an error body in the OpenAI shape: as it is
                error = await response.aread()
                kind = response.headers.get("content-type", "application/json").encode()
                await send_bytes(send, response.status_code, error, kind, self._cors_headers(scope))
                return
            if stream:
                await start_stream(send, 200, headers=self._cors_headers(scope))
                await _send_events(send, builder.start())
            try:
                async for chunk in response.aiter_raw():
                    tap.feed(chunk)
                    events = [e for data in tap.events for e in builder.feed(data)]
                    tap.events.clear()
                    if stream:
                        await _send_events(send, events)
            except httpx.TransportError as exc:
                exchange(scope).unavailable = "engine_lost"
                log.warning("engine connection lost mid-response: %s", exc)
                builder.feed({"error": {"message": "the engine stopped during generation"}})
            final = builder.finish()
            if stream:
                await _send_events(send, final)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif builder.error is not None:
                body = error_body("openai", 500, builder.error["message"])
                await send_json(send, 500, body, self._cors_headers(scope))
            else:
                await send_json(send, 200, builder.response(), self._cors_headers(scope))
        finally:
            await response.aclose()

    # --- status and admin -------------------------------------------------------------------

    def _openai_model(self, alias: str, entry: AliasEntry) -> dict[str, Any]:
        return {
            "id": alias,
            "object": "model",
            "created": int(self.started),
            "owned_by": "local-ai",
            "name": entry.name or alias,
            "context_length": entry.context,
            "max_output_tokens": entry.max_output_tokens,
        }

    def _anthropic_model(self, alias: str, entry: AliasEntry) -> dict[str, Any]:
        created = datetime.fromtimestamp(self.started, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "type": "model",
            "id": alias,
            "display_name": entry.name or alias,
            "created_at": created,
        }

    async def status(self, *, admin: bool = False, detail: bool = False) -> dict[str, Any]:
        """`detail` (the API key, when one is set): load errors and log paths, for the page."""
        detail = detail or admin
        state_file = settings.paths().state_file
        engine_status = await self._engine_status()
        group_status = {a: await self._engine_status(g) for a, g in self.groups.items()}
        engine_models = {m["path"]: m for m in engine_status.get("models", [])}
        models = []
        for alias, entry in self.alias_map.models.items():
            status_of = group_status.get(alias, engine_status)
            seen = {m["path"]: m for m in status_of.get("models", [])}.get(entry.path, {})
            if alias not in group_status:
                seen = engine_models.get(entry.path, {})
            item: dict[str, Any] = {
                "alias": alias,
                "name": entry.name or alias,
                "default": alias == self.alias_map.default_alias,
                "loaded": bool(seen.get("loaded")),
                "loading": bool(seen.get("loading")),
                "memory_bytes": seen.get("memory_bytes"),
                # Prefix caches kept for reuse, and how many gave way to admit a request.
                "cached_prefix_bytes": seen.get("cached_prefix_bytes"),
                "prefixes_evicted_for_memory": seen.get("prefixes_evicted_for_memory"),
                "context": entry.context,
                "max_output_tokens": entry.max_output_tokens,
                "quantization": entry.quantization,
                "digest": entry.digest,
                "format": entry.format,
                "source": web.public_source(entry.source),
                "size_bytes": web.directory_size(entry.path),
                "error": web.load_error(status_of, entry.path, detail=detail),
                "benchmarks": web.benchmarks(state_file, alias, entry.path),
                "group": self._group_status(alias, group_status.get(alias, {}), detail=detail),
            }
            if admin:
                item["path"] = entry.path
                item["source"] = entry.source
            models.append(item)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "url": self.config.url,
            "started_at": datetime.fromtimestamp(self.started, UTC).isoformat(),
            "uptime_s": round(time.time() - self.started, 1),
            "config_hash": self.config.config_hash,
            "auth": bool(self.config.api_key),
            "engine": {
                **self.supervisor.snapshot(),
                "active_generations": engine_status.get("active_generations"),
                "batch": _batch_status(engine_status.get("batch"), detail=detail),
                # What the running engine enforces (after restart-engine: the new values).
                "max_loaded_models": engine_status.get("max_loaded_models"),
                "idle_ttl_s": engine_status.get("idle_ttl_s"),
                "active_memory_bytes": engine_status.get("active_memory_bytes"),
                "peak_memory_bytes": engine_status.get("peak_memory_bytes"),
                "prompt_cache_disk": diskcache.usage(settings.paths().prompt_cache),
            },
            "models": models,
            **({"logs": {"engine": str(self.supervisor.log_path)}} if detail else {}),
            # The last hour (what /metrics counts, per minute): for the page and `server status`.
            **({"activity": self.metrics.history.series()} if detail else {}),
            **({"settings": self._settings()} if admin else {}),
            "requests": {
                **self.counters,
                "active": self.active,
                "queued": len(self._waiters),
                "max_active": self.config.max_active,
                "max_queued": self.config.engine.max_queued_requests,
            },
        }

    def _group_status(
        self, alias: str, engine: dict[str, Any], *, detail: bool
    ) -> dict[str, Any] | None:
        """A sharded alias's group: its state and each rank (host, pid, state, last error)."""
        group = self.groups.get(alias)
        if group is None:
            return None
        seen = engine.get("group")
        seen = seen if isinstance(seen, dict) else {}
        report: dict[str, Any] = {
            **group.snapshot(),
            "last_collective_age_s": seen.get("last_collective_age_s"),
        }
        if detail:
            report["log"] = str(group.log_path)
        return report

    async def _engine_status(self, supervisor: EngineSupervisor | None = None) -> dict[str, Any]:
        """The engine's /status, or {} while it is not ready or does not answer."""
        supervisor = supervisor or self.supervisor
        if not supervisor.ready:
            return {}
        try:
            answer = await supervisor.get("/status", seconds=1.0)
        except (httpx.HTTPError, ValueError):
            return {}
        return answer if isinstance(answer, dict) else {}

    async def _metrics(self, scope: Scope, send: Send, *, head: bool) -> None:
        """Prometheus text; with an API key set, only for callers that send it."""
        if not (self._api_key_ok(scope) or self._admin_ok(scope)):
            await self._key_missing(scope, send)
            return
        from prometheus_client import CONTENT_TYPE_LATEST

        engine = await self._engine_status()
        by_path = {entry.path: alias for alias, entry in self.alias_map.models.items()}
        loads = {
            by_path[path]: figures
            for path, figures in (engine.get("model_loads") or {}).items()
            if path in by_path
        }
        body = self.metrics.render(
            {
                "queued": len(self._waiters),
                "active": self.active,
                "engine_up": 1 if self.supervisor.ready else 0,
                "restarts": self.supervisor.restarts,
                "engine": engine,
                "loads": loads,
            }
        )
        await send_bytes(send, 200, body, CONTENT_TYPE_LATEST.encode(), head=head)

    async def _load(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Load an alias's model now (the page, when a model is chosen); its error if it fails."""
        if not self._api_key_ok(scope):
            await self._error(scope, send, 401, "invalid or missing API key")
            return
        body = await self._json_body(scope, receive, send)
        if body is None:
            return
        alias = body.get("model")
        entry = self.alias_map.models.get(alias) if isinstance(alias, str) else None
        if entry is None:
            await self._unknown_model(scope, send, str(alias))
            return
        supervisor = self.supervisor_for(alias)
        if not await self._wait_engine(supervisor):
            reason = supervisor.reason or f"the {supervisor.name} is starting"
            await self._error(scope, send, 503, reason)
            return
        started = time.monotonic()
        try:
            response = await supervisor.client.post("/load", json={"path": entry.path})
            answer = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            await self._error(scope, send, 503, f"the engine is restarting ({type(exc).__name__})")
            return
        seconds = round(time.monotonic() - started, 2)
        result: dict[str, Any] = {"alias": alias, "seconds": seconds}
        if response.status_code == 200:
            result.update(loaded=True, memory_bytes=answer.get("memory_bytes"))
        else:  # the request worked; the model did not load (the page shows why)
            error = answer.get("error") if isinstance(answer, dict) else None
            result.update(
                loaded=False, error=str(error or f"engine answered {response.status_code}")
            )
        await send_json(send, 200, result)

    def _settings(self) -> dict[str, Any]:
        """What `local-ai plan` compares with the manifest (admin only)."""
        return {
            "gateway": self.config.settings.get("gateway", {}),
            "engine": self.engine_settings,
            "aliases_hash": self.alias_map.hash,
            "generation": self.alias_map.generation,
        }

    def _reconfigure_engine(self, settings: dict[str, Any]) -> None:
        """New engine settings from apply, used by the engine started next."""
        from dataclasses import replace

        engine = EngineSettings.model_validate(settings)
        self.config = replace(self.config, engine=engine)
        self.supervisor.reconfigure(
            max_loaded_models=engine.max_loaded_models,
            idle_ttl_s=engine.idle_ttl_seconds,
            prompt_cache=engine.prompt_cache,
            max_batch_size=engine.max_batch_size,
            prompt_cache_disk_mb=engine.prompt_cache_disk_mb,
        )
        self.engine_settings = engine_record(engine)

    async def _clear_prompt_cache(self) -> dict[str, int]:
        """Through a ready engine (between its steps); otherwise here, as no engine reads it."""
        if self.supervisor.ready:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                return dict(await self.supervisor.post("/prompt-cache/clear"))
        return diskcache.clear(settings.paths().prompt_cache)

    async def _admin(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        if not self._admin_ok(scope):
            await self._error(scope, send, 401, "the admin API needs the instance token")
            return
        raw = b""
        with contextlib.suppress(BodyTooLarge):
            raw = await read_body(receive, 1024 * 1024)
        if path == "/api/admin/reload":
            try:
                self.alias_map = load_alias_map(self.aliases_file)
            except Exception as exc:
                await self._error(scope, send, 400, f"cannot reload the alias map: {exc}")
                return
            log.info("alias map reloaded: %s", ", ".join(self.alias_map.models) or "(empty)")
            await self._sync_groups()
            await send_json(send, 200, {"reloaded": True, "models": list(self.alias_map.models)})
        elif path == "/api/admin/restart-engine":
            try:
                body = json.loads(raw) if raw.strip() else {}
                if isinstance(body, dict) and isinstance(body.get("engine"), dict):
                    self._reconfigure_engine(body["engine"])
            except ValueError as exc:
                await self._error(scope, send, 400, f"invalid engine settings: {exc}")
                return
            self._background = asyncio.ensure_future(self.supervisor.restart())
            await send_json(send, 202, {"restarting": True})
        elif path == "/api/admin/clear-prompt-cache":
            await send_json(send, 200, await self._clear_prompt_cache())
        else:
            await self._error(scope, send, 404, f"no admin route {path}")


def _batch_status(batch: Any, *, detail: bool) -> Any:
    """The engine's batch counters; the disk cache's directory (a local path) only with `detail`."""
    if detail or not isinstance(batch, dict) or not isinstance(batch.get("disk_cache"), dict):
        return batch
    disk = {k: v for k, v in batch["disk_cache"].items() if k != "dir"}
    return {**batch, "disk_cache": disk}
