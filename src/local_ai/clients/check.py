"""`local-ai clients check`: send each configured client's first requests to the server.

The requests are read from the client files as local-ai wrote them (base URL, model names),
shaped as each client sends them: Zed's tool-calling chat stream, Claude Code's `HEAD` probe,
model list and `/v1/messages?beta=true` stream with tools, Goose's model list and chat stream.
The key sent is the server's own (server.api_key, or the variable server.api_key_env names).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from local_ai.clients import claude_code, codex, goose, jsonc, tomlkeys, yamlkeys, zed
from local_ai.clients.plan import CLIENTS, ClientsObserved, is_enabled, observe_clients
from local_ai.clients.spec import server_url
from local_ai.manifest.api_key import resolve_api_key
from local_ai.manifest.models import CodexClient, GooseClient, Manifest, ZedClient

if TYPE_CHECKING:
    import httpx

MAX_TOKENS = 8
# A tool call of a real model takes a few dozen tokens; room for a short thought before it.
ROUND_TRIP_TOKENS = 256
TOOL_OUTPUT = "README.md\nsrc/\ntests/"
TOOL = {
    "name": "read_file",
    "description": "Read a file of the project",
    "parameters": {
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
    },
}


@dataclass(frozen=True)
class Probe:
    """One request and what came back."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class ClientCheck:
    client: str
    title: str
    probes: tuple[Probe, ...] = ()
    problem: str | None = None  # why no request could be sent (not configured, unreadable)
    endpoint: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and all(p.ok for p in self.probes)

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "ok": self.ok,
            "endpoint": self.endpoint,
            "problem": self.problem,
            "probes": [{"name": p.name, "ok": p.ok, "detail": p.detail} for p in self.probes],
        }


class _NotConfigured(Exception):
    pass


# ------------------------------------------------------------------------------- requests


def _message(response: httpx.Response) -> str:
    """The error message of an OpenAI- or Anthropic-shaped error body, else the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(error or body)[:200]


def _sse(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if line.startswith("data:"):
            yield line[5:].strip()


class _Prober:
    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.probes: list[Probe] = []

    def run(
        self,
        name: str,
        method: str,
        url: str,
        *,
        judge: Callable[[httpx.Response], str | None] | None = None,
        **kwargs: Any,
    ) -> httpx.Response | None:
        """Send one request; a failure is recorded, not raised. `judge` returns a problem."""
        import httpx

        try:
            response = self.client.request(method, url, **kwargs)
        except httpx.ConnectError:
            self.probes.append(Probe(name, False, f"cannot connect to {_origin(url)}"))
            return None
        except httpx.HTTPError as exc:
            self.probes.append(Probe(name, False, f"{type(exc).__name__}: {exc}"))
            return None
        if response.status_code >= 400 and method != "HEAD":
            detail = f"{response.status_code}: {_message(response)}"
            self.probes.append(Probe(name, False, detail))
            return None
        problem = judge(response) if judge else None
        detail = problem or f"{response.status_code} {response.reason_phrase}".strip()
        self.probes.append(Probe(name, problem is None, detail))
        return response if problem is None else None

    @property
    def down(self) -> bool:
        return bool(self.probes) and self.probes[-1].detail.startswith("cannot connect")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _lists(models: list[str], key: str = "id") -> Callable[[httpx.Response], str | None]:
    def judge(response: httpx.Response) -> str | None:
        served = {str(m.get(key)) for m in response.json().get("data", [])}
        missing = [m for m in models if m not in served]
        if missing:
            return f"not served: {', '.join(missing)} (served: {', '.join(sorted(served))})"
        return None

    return judge


def _openai_stream(response: httpx.Response) -> str | None:
    events = list(_sse(response.text))
    if not events or events[-1] != "[DONE]":
        return "the stream did not end with [DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    if not any(c.get("choices") for c in chunks):
        return "the stream carried no choices"
    return None


def _typed_stream(first: str, *last: str) -> Callable[[httpx.Response], str | None]:
    """A stream of typed events (Anthropic, Responses) from `first` to one of `last`."""

    def judge(response: httpx.Response) -> str | None:
        kinds = []
        for data in _sse(response.text):
            try:
                kinds.append(json.loads(data).get("type"))
            except ValueError:
                return f"not an event: {data[:80]}"
        if not kinds or kinds[0] != first or kinds[-1] not in last:
            return f"unexpected events: {', '.join(map(str, kinds[:6])) or 'none'}"
        return None

    return judge


_anthropic_stream = _typed_stream("message_start", "message_stop")
# A reply cut at the check's 8-token cap ends as incomplete, which is as good.
_responses_stream = _typed_stream("response.created", "response.completed", "response.incomplete")


def _chat_body(model: str, system: str) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": [{"type": "text", "text": "Which files are here?"}]},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": MAX_TOKENS,
        "tool_choice": "auto",
        "tools": [{"type": "function", "function": TOOL}],
    }


# -------------------------------------------------------------------------------- clients


def _read(observed: ClientsObserved, path: Path) -> str:
    if path in observed.unreadable:
        raise _NotConfigured(f"{path}: {observed.unreadable[path]}")
    text = observed.files.get(path)
    if text is None:
        raise _NotConfigured(f"{path} does not exist")
    return text


def _json(observed: ClientsObserved, path: Path) -> Any:
    try:
        return jsonc.loads(_read(observed, path))
    except jsonc.JsoncError as exc:
        raise _NotConfigured(f"{path}:{exc.line}:{exc.column}: {exc.problem}") from None


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _check_zed(
    manifest: Manifest, observed: ClientsObserved, prober: _Prober, key: str
) -> str | None:
    cfg = manifest.clients.zed or ZedClient()
    settings = _json(observed, observed.targets[zed.NAME]["settings"])
    entry = _dig(settings, "language_models", "openai_compatible", cfg.provider_name)
    if not isinstance(entry, dict) or not entry.get("api_url"):
        raise _NotConfigured(f"Zed's settings have no provider {cfg.provider_name!r}")
    api_url = str(entry["api_url"]).rstrip("/")
    names = [str(m.get("name")) for m in entry.get("available_models") or [] if isinstance(m, dict)]
    if not names:
        raise _NotConfigured(f"Zed's provider {cfg.provider_name!r} lists no models")
    agent = _dig(settings, "agent", "default_model")
    ours = isinstance(agent, dict) and agent.get("provider") == cfg.provider_name
    model = str(agent.get("model") or names[0]) if ours else names[0]
    _zed_requests(prober, api_url, model, names, key)
    return api_url


def _list_then_stream(
    prober: _Prober,
    key: str,
    models_url: str,
    names: list[str],
    turn: tuple[str, str, dict[str, Any], Callable[[httpx.Response], str | None]],
) -> None:
    """What an OpenAI-style client sends first: its model list, then `turn` (label, URL, body,
    judge), a streamed request with tools, when the server answered."""
    auth = {"authorization": f"Bearer {key}"}
    prober.run("models listed", "GET", models_url, headers=auth, judge=_lists(names))
    if not prober.down:
        label, url, body, judge = turn
        prober.run(label, "POST", url, headers=auth, json=body, judge=judge)


def _zed_requests(prober: _Prober, api_url: str, model: str, names: list[str], key: str) -> None:
    body = _chat_body(model, _ZED_SYSTEM)
    body |= {"parallel_tool_calls": False, "prompt_cache_key": "local-ai-check"}
    turn = (f"tool-calling chat stream ({model})", f"{api_url}/chat/completions", body)
    _list_then_stream(prober, key, f"{api_url}/models", names, (*turn, _openai_stream))


_ZED_SYSTEM = "You are a helpful assistant in Zed."


def _check_claude(
    manifest: Manifest, observed: ClientsObserved, prober: _Prober, key: str
) -> str | None:
    env = _dig(_json(observed, observed.targets[claude_code.NAME]["settings"]), "env")
    if not isinstance(env, dict) or not env.get("ANTHROPIC_BASE_URL"):
        raise _NotConfigured("Claude Code's settings set no ANTHROPIC_BASE_URL")
    base = str(env["ANTHROPIC_BASE_URL"]).rstrip("/")
    model = env.get("ANTHROPIC_MODEL")
    if not model:
        raise _NotConfigured("Claude Code's settings set no ANTHROPIC_MODEL")
    tiers = [env.get(var) for var, _ in claude_code.TIERS]
    tiers.append(env.get("CLAUDE_CODE_SUBAGENT_MODEL"))
    models = list(dict.fromkeys(str(m) for m in [model, *tiers] if m))
    _claude_requests(prober, base, model, models, str(env.get(claude_code.TOKEN) or key))
    return base


def _claude_headers(token: str) -> dict[str, str]:
    return {
        "authorization": f"Bearer {token}",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        "user-agent": "claude-cli (local-ai clients check)",
    }


def _claude_requests(prober: _Prober, base: str, model: str, models: list[str], token: str) -> None:
    headers = _claude_headers(token)
    prober.run(
        "HEAD /", "HEAD", _origin(base) + "/", headers={"authorization": headers["authorization"]}
    )
    if prober.down:
        return
    prober.run("models listed", "GET", f"{base}/v1/models", headers=headers, judge=_lists(models))
    body = {
        "model": model,
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "system": _CLAUDE_SYSTEM,
        "tools": [_ANTHROPIC_TOOL],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Which files?"}]}],
        "metadata": {"user_id": "local-ai-check"},
    }
    prober.run(
        f"messages stream with tools ({model})",
        "POST",
        f"{base}/v1/messages?beta=true",
        headers=headers,
        json=body,
        judge=_anthropic_stream,
    )


_CLAUDE_SYSTEM = [
    {"type": "text", "text": "x-anthropic-billing-header: cc_version=check"},
    {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
]
_ANTHROPIC_TOOL = {
    "name": TOOL["name"],
    "description": TOOL["description"],
    "input_schema": TOOL["parameters"],
}


def _check_goose(
    manifest: Manifest, observed: ClientsObserved, prober: _Prober, key: str
) -> str | None:
    targets = observed.targets[goose.NAME]
    provider = _json(observed, targets["provider"])
    if not isinstance(provider, dict) or not provider.get("base_url"):
        raise _NotConfigured(f"{targets['provider']} has no base_url")
    found, chosen = yamlkeys.get(_read(observed, targets["config"]), "GOOSE_PROVIDER")
    if not found or chosen != provider.get("name"):
        raise _NotConfigured(f"{targets['config']} does not select {provider.get('name')}")
    _, model = yamlkeys.get(_read(observed, targets["config"]), "GOOSE_MODEL")
    names = [str(m.get("name")) for m in provider.get("models") or [] if isinstance(m, dict)]
    if not model:
        raise _NotConfigured(f"{targets['config']} sets no GOOSE_MODEL")
    url = str(provider["base_url"])
    # Goose lists models at its chat path with chat/completions replaced by models.
    models_url = url.replace("chat/completions", "models") if "chat/completions" in url else url
    _goose_requests(prober, url, models_url, model, names, key)
    return _origin(url)


def _goose_requests(
    prober: _Prober, url: str, models_url: str, model: str, names: list[str], key: str
) -> None:
    turn = (f"chat stream with tools ({model})", url, _chat_body(model, _GOOSE_SYSTEM))
    _list_then_stream(prober, key, models_url, names, (*turn, _openai_stream))


_GOOSE_SYSTEM = "You are a general-purpose AI agent called goose."


def _check_codex(
    manifest: Manifest, observed: ClientsObserved, prober: _Prober, key: str
) -> str | None:
    cfg = manifest.clients.codex or CodexClient()
    path = observed.targets[codex.NAME]["config"]
    try:
        config = tomlkeys.parse(_read(observed, path))
    except tomlkeys.TomlKeysError as exc:
        raise _NotConfigured(f"{path}:{exc.line}:{exc.column}: {exc}") from None
    entry = _dig(config, "model_providers", cfg.provider_id)
    if not isinstance(entry, dict) or not entry.get("base_url"):
        raise _NotConfigured(f"{path} has no provider {cfg.provider_id!r}")
    names = list(codex.profiles(manifest).values())
    model = config.get("model") if config.get("model_provider") == cfg.provider_id else None
    model = str(model or (names[0] if names else ""))
    if not model:
        raise _NotConfigured(f"{path} selects no local-ai model and there are no profiles")
    base = str(entry["base_url"]).rstrip("/")
    _codex_requests(prober, base, model, names, key)
    return _origin(base)


def _codex_requests(prober: _Prober, base: str, model: str, names: list[str], key: str) -> None:
    body = _responses_body(model) | {"stream": True, "max_output_tokens": MAX_TOKENS}
    turn = (f"responses stream with tools ({model})", f"{base}/responses", body)
    _list_then_stream(prober, key, f"{base}/models", names, (*turn, _responses_stream))


def _responses_body(model: str) -> dict[str, Any]:
    """As Codex sends it: instructions, input items, function tools, no server-side storage."""
    return {
        "model": model,
        "instructions": "You are Codex, a coding agent.",
        "input": [_CODEX_ASK],
        "tools": [{"type": "function", "strict": False, **TOOL}],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "store": False,
        "include": [],
    }


_CODEX_ASK = {
    "type": "message",
    "role": "user",
    "content": [{"type": "input_text", "text": "Which files are here?"}],
}


# ---------------------------------------------------------------------- tool-call round trips


Found = tuple[list[Any], str]  # the tool calls of an answer, and what to say when there are none


def _round_trip(
    prober: _Prober,
    url: str,
    model: str,
    headers: dict[str, str],
    body: dict[str, Any],
    found: Callable[[dict[str, Any]], Found],
    follow_up: Callable[[Any], dict[str, Any]],
    answered: Callable[[dict[str, Any]], str | None],
) -> None:
    """Ask for a tool call, then send its result back as the client would (`follow_up`)."""
    calls: list[Any] = []

    def called(response: httpx.Response) -> str | None:
        got, missing = found(_object(response))
        calls.extend(got)
        return None if calls else missing

    if prober.run(f"tool call ({model})", "POST", url, headers=headers, json=body, judge=called):
        prober.run(
            f"tool result answered ({model})",
            "POST",
            url,
            headers=headers,
            json=follow_up(calls[0]),
            judge=lambda r: answered(_object(r)),
        )


def _typed(item: Any, kind: str) -> bool:
    return isinstance(item, dict) and item.get("type") == kind


def _object(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a non-streaming answer; anything else reads as an empty one."""
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _openai_round_trip(prober: _Prober, url: str, model: str, key: str, system: str) -> None:
    body = _chat_body(model, system) | {"stream": False, "max_completion_tokens": ROUND_TRIP_TOKENS}
    del body["stream_options"]

    def found(data: dict[str, Any]) -> Found:
        choice = (data.get("choices") or [{}])[0]
        calls = choice.get("message", {}).get("tool_calls") or []
        return calls, f"no tool call (finish_reason {choice.get('finish_reason')})"

    def follow_up(call: Any) -> dict[str, Any]:
        result = {"role": "tool", "tool_call_id": call.get("id"), "content": TOOL_OUTPUT}
        called = {"role": "assistant", "content": None, "tool_calls": [call]}
        return body | {"messages": [*body["messages"], called, result]}

    auth = {"authorization": f"Bearer {key}"}
    _round_trip(
        prober, url, model, auth, body, found, follow_up,
        lambda d: None if d.get("choices") else "no choices in the answer",
    )  # fmt: skip


def _anthropic_round_trip(prober: _Prober, base: str, model: str, key: str) -> None:
    ask = {"role": "user", "content": [{"type": "text", "text": "Which files?"}]}
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": ROUND_TRIP_TOKENS,
        "system": _CLAUDE_SYSTEM,
        "tools": [_ANTHROPIC_TOOL],
        "messages": [ask],
    }

    def found(data: dict[str, Any]) -> Found:
        uses = [b for b in data.get("content") or [] if _typed(b, "tool_use")]
        return uses, f"no tool_use block (stop_reason {data.get('stop_reason')})"

    def follow_up(use: Any) -> dict[str, Any]:
        result = {"type": "tool_result", "tool_use_id": use.get("id"), "content": TOOL_OUTPUT}
        called = {"role": "assistant", "content": [use]}
        return body | {"messages": [ask, called, {"role": "user", "content": [result]}]}

    _round_trip(
        prober, f"{base}/v1/messages?beta=true", model, _claude_headers(key), body, found,
        follow_up, lambda d: None if d.get("type") == "message" else "not a message",
    )  # fmt: skip


def _responses_round_trip(prober: _Prober, base: str, model: str, key: str) -> None:
    body = _responses_body(model) | {"max_output_tokens": ROUND_TRIP_TOKENS}

    def found(data: dict[str, Any]) -> Found:
        calls = [i for i in data.get("output") or [] if _typed(i, "function_call")]
        return calls, f"no function_call item (status {data.get('status')})"

    def follow_up(call: Any) -> dict[str, Any]:
        output = {"type": "function_call_output", "call_id": call.get("call_id")}
        return body | {"input": [_CODEX_ASK, call, output | {"output": TOOL_OUTPUT}]}

    auth = {"authorization": f"Bearer {key}"}
    _round_trip(
        prober, f"{base}/responses", model, auth, body, found, follow_up,
        lambda d: None if d.get("object") == "response" else "not a response",
    )  # fmt: skip


def conformance(
    manifest: Manifest, alias: str, clients: tuple[str, ...], *, timeout: float = 120.0
) -> list[ClientCheck]:
    """apply's gate: each client's requests (`clients check`'s, sent to `alias` at the URL
    local-ai writes into that client's config) and a tool-call round trip in its API shape."""
    import httpx

    url = server_url(manifest)
    key = server_key(manifest)
    results: list[ClientCheck] = []
    with httpx.Client(timeout=timeout, trust_env=False) as http:
        for client, (_, _, title) in CLIENTS.items():
            if client not in clients:
                continue
            prober = _Prober(http)
            if client == zed.NAME:
                cfg = manifest.clients.zed or ZedClient()
                base = str(zed.provider_entry(manifest, url, cfg)["api_url"])
                _zed_requests(prober, base, alias, [alias], key)
                if not prober.down:
                    chat = f"{base}/chat/completions"
                    _openai_round_trip(prober, chat, alias, key, _ZED_SYSTEM)
            elif client == claude_code.NAME:
                base = claude_code.variables(manifest, url)["ANTHROPIC_BASE_URL"]
                _claude_requests(prober, base, alias, [alias], key)
                if not prober.down:
                    _anthropic_round_trip(prober, base, alias, key)
            elif client == goose.NAME:
                doc = goose.provider_document(
                    manifest, url, manifest.clients.goose or GooseClient()
                )
                base = str(doc["base_url"])
                _goose_requests(prober, base, f"{url}/v1/models", alias, [alias], key)
                if not prober.down:
                    _openai_round_trip(prober, base, alias, key, _GOOSE_SYSTEM)
            else:
                base = str(codex.provider_entry(manifest, url)["base_url"])
                _codex_requests(prober, base, alias, [alias], key)
                if not prober.down:
                    _responses_round_trip(prober, base, alias, key)
            results.append(ClientCheck(client, title, tuple(prober.probes), None, url))
    return results


_CHECKS = {
    zed.NAME: _check_zed,
    claude_code.NAME: _check_claude,
    goose.NAME: _check_goose,
    codex.NAME: _check_codex,
}


def server_key(manifest: Manifest) -> str:
    """The key clients send: the server's, or a placeholder when it needs none."""
    return resolve_api_key(manifest, None) or claude_code.PLACEHOLDER_TOKEN


def check_clients(
    manifest: Manifest,
    *,
    base_dir: Path | None = None,
    only: list[str] | None = None,
    timeout: float = 120.0,
    observed: ClientsObserved | None = None,
) -> list[ClientCheck]:
    """Check every enabled client (or those in `only`) against the running server."""
    import httpx

    observed = observed or observe_clients(manifest, base_dir=base_dir)
    key = server_key(manifest)
    results: list[ClientCheck] = []
    with httpx.Client(timeout=timeout, trust_env=False) as http:
        for client, (_, _, title) in CLIENTS.items():
            if not is_enabled(manifest, client) or (only and client not in only):
                continue
            prober = _Prober(http)
            try:
                endpoint = _CHECKS[client](manifest, observed, prober, key)
            except _NotConfigured as exc:
                results.append(ClientCheck(client, title, problem=f"not configured: {exc}"))
                continue
            results.append(ClientCheck(client, title, tuple(prober.probes), None, endpoint))
    return results
