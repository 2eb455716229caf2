"""The gateway and the engine against one real daemon (started with `local-ai server start`):
security probes, alias resolution, OpenAI/Anthropic SDKs, Claude Code and Zed request shapes,
count_tokens, context limits, queueing, cancellation and supervision."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import local_ai
from tests.server_helpers import (
    TOOL_CALL_JSON,
    TOOL_FUNCTION,
    TOOL_NAME,
    Daemon,
    build_chat_model,
    build_scripted_model,
    build_tool_model,
    claude_code_body,
    free_port,
    raw_status,
    wait_for,
    write_manifest,
)

API_KEY = "test-key-0123456789"
ALLOWED_ORIGIN = "http://allowed.example:3000"
CONTEXT = 2048
AUTH = {"authorization": f"Bearer {API_KEY}"}
SERVED = ["chatty-tool", "tiny", "tool"]  # the daemon's aliases, as the server lists them
# Text, then a Hermes call opened by the one-token `<tool_call>`: what tool_choice acts on.
CHATTY_TOOL_ANSWER = ["Let me", " check", "<tool_call>", TOOL_CALL_JSON, "</tool_call>"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("daemon")
    models = {
        "tiny": build_chat_model(root / "tiny"),
        "tool": build_tool_model(root / "tool"),
        "chatty-tool": build_scripted_model(root / "chatty-tool", {"\n": CHATTY_TOOL_ANSWER}),
    }
    port = free_port()
    manifest = write_manifest(
        root,
        port=port,
        models=models,
        context=CONTEXT,
        server_extra="\n".join(
            [
                'api_key_env = "LOCAL_AI_TEST_KEY"',
                f'cors_origins = ["{ALLOWED_ORIGIN}"]',
                "max_body_mb = 1",
                'preload = ["tiny"]',
            ]
        ),
        engine_extra="max_queued_requests = 1\nmax_batch_size = 4",
    )
    d = Daemon(
        home=root / "home",
        manifest=manifest,
        port=port,
        extra_env={"LOCAL_AI_TEST_KEY": API_KEY},
    )
    with d.running():
        yield d


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon.url, headers=AUTH, timeout=60, trust_env=False) as c:
        yield c


def chat(model: str = "tiny", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hello there, how are you today?"}],
        "temperature": 0,
        **extra,
    }


def sse_events(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events


# --- security ---------------------------------------------------------------------------------


def test_host_header_allowlist(daemon: Daemon) -> None:
    port = daemon.port
    good = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    assert raw_status(port, good.encode()) == 200
    localhost = f"GET /health HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
    assert raw_status(port, localhost.encode()) == 200
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", ""):
        probe = f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        assert raw_status(port, probe.encode()) == 403, host
    # HTTP/1.0 without any Host header.
    assert raw_status(port, b"GET /v1/models HTTP/1.0\r\n\r\n") == 403


def test_origin_checked_on_state_changing_requests(client: httpx.Client) -> None:
    evil = client.post(
        "/v1/chat/completions", json=chat(max_tokens=2), headers={"origin": "http://evil.example"}
    )
    assert evil.status_code == 403
    assert "origin" in evil.json()["error"]["message"]
    allowed = client.post(
        "/v1/chat/completions", json=chat(max_tokens=2), headers={"origin": ALLOWED_ORIGIN}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    # A GET from another origin is answered but without CORS headers: the browser hides it.
    listed = client.get("/v1/models", headers={"origin": "http://evil.example"})
    assert listed.status_code == 200
    assert "access-control-allow-origin" not in listed.headers


def test_cors_preflight_only_for_configured_origins(client: httpx.Client) -> None:
    ok = client.options(
        "/v1/chat/completions",
        headers={
            "origin": ALLOWED_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in ok.headers["access-control-allow-headers"]
    denied = client.options(
        "/v1/chat/completions",
        headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
    )
    assert denied.status_code == 403


def test_api_key_required_on_api_paths(daemon: Daemon) -> None:
    with httpx.Client(base_url=daemon.url, trust_env=False, timeout=10) as anon:
        missing = anon.get("/v1/models")
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "authentication_error"
        anthropic = anon.get("/anthropic/v1/models")
        assert anthropic.status_code == 401
        assert anthropic.json()["type"] == "error"
        assert anthropic.json()["error"]["type"] == "authentication_error"
        wrong = anon.get("/v1/models", headers={"authorization": "Bearer nope-nope-nope"})
        assert wrong.status_code == 401
        assert anon.get("/v1/models", headers=AUTH).status_code == 200
        assert anon.get("/anthropic/v1/models", headers={"x-api-key": API_KEY}).status_code == 200
        # Health, status and the page stay open (no secrets there).
        assert anon.get("/health").status_code == 200
        assert anon.get("/api/status").status_code == 200
        assert "path" not in anon.get("/api/status").json()["models"][0]


def test_body_size_type_and_json_checks(client: httpx.Client) -> None:
    big = b'{"model": "tiny", "messages": [], "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    too_big = client.post(
        "/v1/chat/completions", content=big, headers={"content-type": "application/json"}
    )
    assert too_big.status_code == 413
    form = client.post(
        "/v1/chat/completions", content=b"model=tiny", headers={"content-type": "text/plain"}
    )
    assert form.status_code == 415
    broken = client.post(
        "/anthropic/v1/messages", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["type"] == "error"


def test_models_listed_in_both_shapes(client: httpx.Client) -> None:
    openai = client.get("/v1/models").json()
    assert openai["object"] == "list"
    assert [m["id"] for m in openai["data"]] == SERVED
    assert all(m["object"] == "model" and m["owned_by"] == "local-ai" for m in openai["data"])
    assert client.get("/v1/models/tiny").json()["context_length"] == CONTEXT
    assert client.get("/v1/models/nope").status_code == 404
    anthropic = client.get("/anthropic/v1/models").json()
    assert [m["id"] for m in anthropic["data"]] == SERVED
    assert all(m["type"] == "model" and m["display_name"] for m in anthropic["data"])
    assert anthropic["has_more"] is False


def test_only_aliases_are_served(client: httpx.Client, daemon: Daemon) -> None:
    real_dir = str(daemon.manifest.parent / "tiny")
    for model in ("Qwen/Qwen3-8B", "../x", real_dir, "/etc", "tiny/../tool"):
        openai = client.post("/v1/chat/completions", json=chat(model, max_tokens=2))
        assert openai.status_code == 404, model
        assert "tiny, tool" in openai.json()["error"]["message"]
        anthropic = client.post(
            "/anthropic/v1/messages",
            json={"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert anthropic.status_code == 404, model
        assert anthropic.json()["error"]["type"] == "not_found_error"


def test_file_loading_fields_are_refused(client: httpx.Client) -> None:
    for extra in (
        {"adapter_path": "/tmp/adapter"},
        {"draft_model": "/tmp/draft"},
        {"extra_body": {"chat_template": "{{ 7*7 }}"}},
    ):
        response = client.post("/v1/chat/completions", json=chat(max_tokens=2, **extra))
        assert response.status_code == 400, extra
        assert "not accepted" in response.json()["error"]["message"]


def test_page_health_and_unsupported_paths(client: httpx.Client) -> None:
    head = client.head("/")
    assert head.status_code == 200
    assert head.content == b""
    page = client.get("/")
    assert "local-ai" in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert client.get("/health").json()["status"] == "ready"
    completions = client.post("/v1/completions", json={"model": "tiny", "prompt": "hi"})
    assert completions.status_code == 404
    assert "/v1/chat/completions" in completions.json()["error"]["message"]


# --- generation through the SDKs ------------------------------------------------------------


def test_openai_sdk_chat_stream_and_not(daemon: Daemon) -> None:
    import openai

    sdk = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=API_KEY, max_retries=0)
    result = sdk.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Say something"}],
        max_completion_tokens=7,
        temperature=0,
    )
    assert result.model == "tiny"
    assert result.choices[0].message.content
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None and result.usage.completion_tokens == 7
    stream = sdk.chat.completions.create(
        model="tiny",
        messages=[
            {"role": "developer", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Say something"}]},
        ],
        max_tokens=5,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes[0] == "length"


def test_stop_strings_and_seed_apply_per_request(daemon: Daemon) -> None:
    import anthropic
    import openai

    sdk = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=API_KEY, max_retries=0)
    ask = {"model": "tiny", "messages": [{"role": "user", "content": "Say something"}]}
    full = sdk.chat.completions.create(**ask, max_tokens=24, temperature=0)
    text = full.choices[0].message.content or ""
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = sdk.chat.completions.create(**ask, max_tokens=24, temperature=0, stop=[stop])
    assert stopped.choices[0].message.content == text[: text.find(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    streamed = sdk.chat.completions.create(
        **ask, max_tokens=24, temperature=0, stop=stop, stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        == text[: text.find(stop)]
    )
    claude = anthropic.Anthropic(base_url=f"{daemon.url}/anthropic", api_key=API_KEY)
    message = claude.messages.create(
        model="tiny",
        max_tokens=24,
        messages=[{"role": "user", "content": "Say something"}],
        stop_sequences=[stop],
        extra_body={"temperature": 0},
    )
    assert message.content[0].text == text[: text.find(stop)]  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", stop)
    with claude.messages.stream(
        model="tiny",
        max_tokens=24,
        messages=[{"role": "user", "content": "Say something"}],
        stop_sequences=["never-produced", stop],
        extra_body={"temperature": 0},
    ) as events:
        final = events.get_final_message()
    assert final.content[0].text == text[: text.find(stop)]  # type: ignore[union-attr]
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)
    plain = claude.messages.create(
        model="tiny",
        max_tokens=24,
        messages=[{"role": "user", "content": "Say something"}],
        stop_sequences=["never-produced"],
        extra_body={"temperature": 0},
    )
    assert plain.stop_sequence is None and plain.stop_reason in ("end_turn", "max_tokens")
    sampled = [
        sdk.chat.completions.create(**ask, max_tokens=16, temperature=1.0, seed=seed)
        .choices[0]
        .message.content
        for seed in (11, 11, 12)
    ]
    assert sampled[0] == sampled[1] != sampled[2]


def test_tool_choice_none_required_and_named(daemon: Daemon) -> None:
    import anthropic
    import openai

    sdk = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=API_KEY, max_retries=0)
    tools: Any = [{"type": "function", "function": TOOL_FUNCTION}]
    other: Any = {"type": "function", "function": {**TOOL_FUNCTION, "name": "get_time"}}
    ask: Any = {
        "model": "chatty-tool",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "max_tokens": 12,
        "temperature": 0,
    }

    auto = sdk.chat.completions.create(**ask, tools=tools).choices[0]
    assert auto.message.content == "Let me check" and auto.finish_reason == "tool_calls"
    # "required" and a named tool: the call marker is the first token, so no text before it.
    for choice in ("required", {"type": "function", "function": {"name": TOOL_NAME}}):
        forced = sdk.chat.completions.create(
            **ask, tools=[other, *tools], tool_choice=choice
        ).choices[0]
        assert forced.finish_reason == "tool_calls" and not forced.message.content
        assert [c.function.name for c in forced.message.tool_calls or []] == [TOOL_NAME]  # type: ignore[union-attr]
    sampled = sdk.chat.completions.create(
        **{**ask, "temperature": 1.0}, tools=tools, tool_choice="required", seed=3
    ).choices[0]  # forcing composes with a sampler: still no text before the marker
    assert not (sampled.message.content or "").startswith("Let me")
    # "none": tools are not offered and the marker cannot be written: text, never markup.
    none = sdk.chat.completions.create(**ask, tools=tools, tool_choice="none").choices[0]
    content = none.message.content or ""
    assert none.finish_reason in ("stop", "length") and not none.message.tool_calls
    assert content.startswith("Let me check") and "<tool_call>" not in content
    assert "get_weather" not in content
    chunks = list(sdk.chat.completions.create(**ask, tools=tools, tool_choice="none", stream=True))
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        sdk.chat.completions.create(
            **ask, tools=tools, tool_choice={"type": "function", "function": {"name": "nope"}}
        )

    claude = anthropic.Anthropic(base_url=f"{daemon.url}/anthropic", api_key=API_KEY)
    a_tools: Any = [
        {"name": TOOL_NAME, "description": "weather", "input_schema": TOOL_FUNCTION["parameters"]}
    ]
    a_ask: Any = {
        "model": "chatty-tool",
        "max_tokens": 12,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": a_tools,
        "extra_body": {"temperature": 0},
    }
    with claude.messages.stream(**a_ask, tool_choice={"type": "none"}) as events:
        text_only = events.get_final_message()
    assert [b.type for b in text_only.content] == ["text"]
    assert text_only.stop_reason in ("end_turn", "max_tokens")
    assert text_only.content[0].text == content  # type: ignore[union-attr]
    for a_choice in ({"type": "any"}, {"type": "tool", "name": TOOL_NAME}):
        used = claude.messages.create(**a_ask, tool_choice=a_choice)
        assert [b.type for b in used.content] == ["tool_use"] and used.stop_reason == "tool_use"
    counted = [
        claude.messages.count_tokens(
            model="chatty-tool", messages=a_ask["messages"], tools=a_tools, tool_choice=c
        ).input_tokens
        for c in ({"type": "auto"}, {"type": "none"})
    ]
    assert counted[0] > counted[1]  # "none" leaves the tools out of the prompt


def test_openai_sdk_tool_calls(daemon: Daemon) -> None:
    import openai

    sdk = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key=API_KEY, max_retries=0)
    tools: Any = [{"type": "function", "function": TOOL_FUNCTION}]
    messages: Any = [{"role": "user", "content": "Weather in Paris?"}]
    result = sdk.chat.completions.create(
        model="tool", messages=messages, tools=tools, max_tokens=20
    )
    call = result.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert result.choices[0].finish_reason == "tool_calls"
    assert call.function.name == TOOL_NAME  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    streamed = list(
        sdk.chat.completions.create(
            model="tool", messages=messages, tools=tools, max_tokens=20, stream=True
        )
    )
    deltas = [tc for c in streamed if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].index == 0 and deltas[0].id
    assert deltas[0].function is not None and deltas[0].function.name == TOOL_NAME
    # The result goes back as a tool message; the next turn is accepted.
    follow_up = sdk.chat.completions.create(
        model="tool",
        messages=[
            *messages,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"},
        ],
        tools=tools,
        max_tokens=20,
    )
    assert follow_up.choices[0].message is not None


def test_anthropic_sdk_messages(daemon: Daemon) -> None:
    import anthropic

    sdk = anthropic.Anthropic(base_url=f"{daemon.url}/anthropic", api_key=API_KEY, max_retries=0)
    message = sdk.messages.create(
        model="tiny",
        max_tokens=6,
        extra_body={"temperature": 0},  # this SDK version dropped the parameter
        system="You are terse.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.model == "tiny"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 6
    with sdk.messages.stream(
        model="tiny",
        max_tokens=6,
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"temperature": 0},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens"
    beta = sdk.beta.messages.create(
        model="tiny",
        max_tokens=3,
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"temperature": 0},
    )
    assert beta.content


def test_anthropic_tool_use_round_trip(daemon: Daemon) -> None:
    import anthropic

    sdk = anthropic.Anthropic(base_url=f"{daemon.url}/anthropic", api_key=API_KEY, max_retries=0)
    tools: Any = [
        {
            "name": TOOL_NAME,
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    messages: Any = [{"role": "user", "content": "Weather in Paris?"}]
    partial_json = []
    with sdk.messages.stream(model="tool", max_tokens=30, tools=tools, messages=messages) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partial_json.append(event.delta.partial_json)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    block = final.content[-1]
    assert block.type == "tool_use" and block.name == TOOL_NAME
    assert block.input == {"city": "Paris"}
    assert json.loads("".join(partial_json)) == {"city": "Paris"}
    again = sdk.messages.create(
        model="tool",
        max_tokens=30,
        tools=tools,
        messages=[
            *messages,
            {"role": "assistant", "content": [block.model_dump()]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": block.id, "content": "18 degrees"}
                ],
            },
        ],
    )
    assert again.content[-1].type == "tool_use"  # the scripted model always calls the tool


def test_claude_code_shaped_requests(client: httpx.Client) -> None:
    headers = {
        "x-api-key": API_KEY,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    }
    # Greedy: a sampled end token first would leave the stream without a content block.
    streamed = client.post(
        "/anthropic/v1/messages?beta=true",
        json={**claude_code_body("aaa", True), "temperature": 0},
        headers=headers,
    )
    assert streamed.status_code == 200, streamed.text
    events = sse_events(streamed.text)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds
    first = client.post(
        "/anthropic/v1/messages?beta=true", json=claude_code_body("bbb", False), headers=headers
    )
    assert first.status_code == 200, first.text
    # Only the billing line differs: the prompt prefix is reused from the cache.
    second = client.post(
        "/anthropic/v1/messages?beta=true", json=claude_code_body("ccc", False), headers=headers
    )
    usage = second.json()["usage"]
    assert usage.get("cache_read_input_tokens", 0) > usage["input_tokens"] // 2, usage
    counted = client.post(
        "/anthropic/v1/messages/count_tokens?beta=true",
        json={k: v for k, v in claude_code_body("ddd", False).items() if k != "max_tokens"},
        headers=headers,
    )
    assert counted.status_code == 200, counted.text
    assert counted.json()["input_tokens"] == usage["input_tokens"]


def test_zed_shaped_request(client: httpx.Client) -> None:
    body = {
        "model": "tool",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant in Zed."},
            {"role": "user", "content": [{"type": "text", "text": "What is the weather?"}]},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 30,
        "temperature": 1.0,
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": TOOL_NAME,
                    "description": "weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ],
        "prompt_cache_key": "zed-thread-1",
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    events = sse_events(response.text)
    calls = [
        tc
        for e in events
        for c in e.get("choices", [])
        for tc in c["delta"].get("tool_calls") or []
    ]
    assert calls and calls[0]["index"] == 0 and calls[0]["id"]
    assert calls[0]["function"]["name"] == TOOL_NAME
    assert any(e.get("usage") for e in events)
    assert response.text.rstrip().endswith("data: [DONE]")


def test_count_tokens_matches_generation(daemon: Daemon) -> None:
    import anthropic

    sdk = anthropic.Anthropic(base_url=f"{daemon.url}/anthropic", api_key=API_KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": "Count these tokens, please."}]
    counted = sdk.messages.count_tokens(model="tiny", system="Be brief.", messages=messages)
    longer = sdk.messages.count_tokens(
        model="tiny", system="Be brief.", messages=[{"role": "user", "content": "word " * 50}]
    )
    assert 0 < counted.input_tokens < longer.input_tokens
    made = sdk.messages.create(model="tiny", system="Be brief.", messages=messages, max_tokens=1)
    assert made.usage.input_tokens == counted.input_tokens


def test_context_limit_is_a_400_in_each_shape(client: httpx.Client) -> None:
    long_text = "hello world " * 1500
    started = time.perf_counter()
    for stream in (False, True):
        openai = client.post(
            "/v1/chat/completions",
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": long_text}],
                "stream": stream,
            },
        )
        assert openai.status_code == 400
        assert openai.json()["error"]["code"] == "context_length_exceeded"
        anthropic = client.post(
            "/anthropic/v1/messages",
            json={
                "model": "tiny",
                "max_tokens": 10,
                "stream": stream,
                "messages": [{"role": "user", "content": long_text}],
            },
        )
        assert anthropic.status_code == 400
        assert anthropic.json()["error"]["type"] == "invalid_request_error"
        assert "prompt is too long" in anthropic.json()["error"]["message"]
    assert time.perf_counter() - started < 30  # refused, not generated up to the context


# --- concurrency, queueing, cancellation, supervision ------------------------------------------


class Stream:
    """A long greedy stream in a thread; `close()` drops the connection like a client would."""

    def __init__(self, daemon: Daemon, max_tokens: int = 1900) -> None:
        self.tokens = 0
        self.done = threading.Event()
        self.first = threading.Event()
        self.status: int | None = None
        self._stop = threading.Event()
        self._client = httpx.Client(base_url=daemon.url, headers=AUTH, timeout=60, trust_env=False)
        body = chat(max_tokens=max_tokens, stream=True)
        self._thread = threading.Thread(target=self._run, args=(body,), daemon=True)
        self._thread.start()

    def _run(self, body: dict[str, Any]) -> None:
        try:
            with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    if self._stop.is_set():
                        break
                    if '"content"' in line:
                        self.tokens += 1
                        self.first.set()
        except httpx.HTTPError:
            pass
        finally:
            self.done.set()

    def close(self) -> None:
        self._stop.set()
        self.done.wait(10)
        self._client.close()


def engine_status(client: httpx.Client) -> dict[str, Any]:
    return dict(client.get("/api/status").json())


def test_health_answers_fast_and_requests_interleave(daemon: Daemon, client: httpx.Client) -> None:
    long = Stream(daemon)
    try:
        assert long.first.wait(30)
        for _ in range(5):
            assert client.get("/health").status_code == 200
            assert client.get("/").status_code == 200
        # Health, the page and a short request complete while the long one is still streaming
        # (no head-of-line wait), whatever the machine's load makes of either's speed.
        short = client.post("/v1/chat/completions", json=chat(max_tokens=3))
        assert short.status_code == 200
        assert not long.done.is_set()
        assert long.tokens < 1900
    finally:
        long.close()


def test_client_disconnect_cancels_generation(daemon: Daemon, client: httpx.Client) -> None:
    before = engine_status(client)
    long = Stream(daemon)
    assert long.first.wait(30)
    assert engine_status(client)["engine"]["active_generations"] == 1
    long.close()
    assert wait_for(lambda: engine_status(client)["engine"]["active_generations"] == 0, 30)
    after = engine_status(client)
    assert after["requests"]["active"] == 0
    # At least: the previous test's dropped stream may be counted after `before` was read.
    cancelled = before["requests"]["cancelled"] + 1
    counted = wait_for(lambda: engine_status(client)["requests"]["cancelled"] >= cancelled, 30)
    assert counted, (before["requests"], engine_status(client)["requests"])
    # The engine stopped the generation: it did not run on to its 1900 tokens.
    generated = after["engine"]["batch"]["generated_tokens"]
    assert generated - before["engine"]["batch"]["generated_tokens"] < 1900, after["engine"]


def test_queue_limit_answers_503(daemon: Daemon, client: httpx.Client) -> None:
    # max_batch_size is 4 and max_queued_requests 1: the sixth concurrent request is refused.
    streams = [Stream(daemon) for _ in range(5)]
    try:
        assert wait_for(lambda: engine_status(client)["requests"]["queued"] == 1, 30)
        refused = client.post("/v1/chat/completions", json=chat(max_tokens=2))
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        assert refused.json()["error"]["type"] == "server_error"
        anthropic = client.post(
            "/anthropic/v1/messages",
            json={"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]},
        )
        assert anthropic.status_code == 503
        assert anthropic.json()["error"]["type"] == "overloaded_error"
    finally:
        for stream in streams:
            stream.close()
    assert wait_for(lambda: engine_status(client)["requests"]["active"] == 0, 30)
    assert engine_status(client)["requests"]["queued"] == 0


def test_admin_api_needs_the_instance_token(daemon: Daemon, client: httpx.Client) -> None:
    anon = client.post("/api/admin/reload")
    assert anon.status_code == 401
    token = daemon.token()
    assert oct((daemon.home / "run" / "admin-token").stat().st_mode & 0o777) == "0o600"
    reloaded = client.post("/api/admin/reload", headers={"authorization": f"Bearer {token}"})
    assert reloaded.status_code == 200
    assert reloaded.json()["models"] == SERVED
    detailed = client.get("/api/status", headers={"authorization": f"Bearer {token}"}).json()
    paths = {m["alias"]: m["path"] for m in detailed["models"]}
    assert paths["tiny"].endswith("tiny")


def test_status_cli_reports_config_drift(daemon: Daemon, client: httpx.Client) -> None:
    # A finished request leaves its KV cache kept for the next turn: status prices it.
    assert client.post("/v1/chat/completions", json=chat(max_tokens=3)).status_code == 200
    result = daemon.cli("server", "status", "--json")
    status = json.loads(result.stdout)
    assert status["running"] is True
    assert status["url"] == daemon.url and status["pid"] == daemon.pidfile()["pid"]
    assert status["version"] == local_ai.__version__ and status["uptime_s"] > 0
    assert status["engine"]["state"] == "ready"
    assert status["config_differs"] is False
    models = {m["alias"]: m for m in status["models"]}
    assert models["tiny"]["loaded"] is True and models["tiny"]["memory_bytes"] > 0
    assert models["tiny"]["cached_prefix_bytes"] > 0
    assert models["tiny"]["prefixes_evicted_for_memory"] == 0
    text = daemon.cli("server", "status").stdout
    assert "running at " + daemon.url in text and "tiny (default)" in text
    original = daemon.manifest.read_text()
    try:
        daemon.manifest.write_text(original.replace(f"context = {CONTEXT}", "context = 4096", 1))
        drift = json.loads(daemon.cli("server", "status", "--json").stdout)
        assert drift["config_differs"] is True
    finally:
        daemon.manifest.write_text(original)


def test_prompt_cache_on_disk_is_sized_and_cleared_while_serving(
    daemon: Daemon, client: httpx.Client, tmp_path: Path
) -> None:
    words = " ".join(f"w{i}" for i in range(350))
    body = chat(messages=[{"role": "user", "content": words}], max_tokens=2)
    counted = client.post(
        "/anthropic/v1/messages/count_tokens",
        json={"model": "tiny", "messages": body["messages"]},
    ).json()["input_tokens"]
    assert 1024 < counted < CONTEXT - 16  # long enough to be saved on disk
    assert client.post("/v1/chat/completions", json=body).status_code == 200

    def on_disk() -> dict[str, Any]:
        return dict(client.get("/api/status").json()["engine"]["prompt_cache_disk"])

    assert wait_for(lambda: on_disk()["files"] > 0, timeout=60)
    saved = on_disk()
    assert saved["bytes"] > 0
    status = json.loads(daemon.cli("server", "status", "--json").stdout)
    assert status["engine"]["prompt_cache_disk"] == saved
    assert "prompt cache on disk: " in daemon.cli("server", "status").stdout
    cleared = daemon.cli("server", "cache", "clear", "--json")
    assert cleared.returncode == 0, cleared.stderr
    assert json.loads(cleared.stdout) == saved
    assert on_disk() == {"files": 0, "bytes": 0}
    assert not list((daemon.home / "cache" / "prompts").glob("*/*"))
    # The engine serves on (and saves again) after the files went away under it.
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert wait_for(lambda: on_disk()["files"] > 0, timeout=60)
    # Without a running server the command clears the directory itself.
    home = tmp_path / "home"
    stale = home / "cache" / "prompts" / "0123abcd" / "1024-00ff.safetensors"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 10)
    offline = subprocess.run(
        [sys.executable, "-m", "local_ai", "server", "cache", "clear"],
        capture_output=True,
        text=True,
        env={**os.environ, **daemon.env, "LOCAL_AI_HOME": str(home)},
        timeout=120,
        check=False,
    )
    assert offline.returncode == 0, offline.stderr
    assert "removed 1 prompt cache files" in offline.stdout and not stale.exists()


def test_engine_killed_with_sigkill_comes_back(daemon: Daemon, client: httpx.Client) -> None:
    from local_ai.server.gateway.supervisor import STABLE_AFTER_S

    # As after any start: the engine has run a while and its warm standby is ready.
    def settled() -> bool:
        engine = engine_status(client)["engine"]
        return bool(engine["standby_pid"]) and engine["uptime_s"] > STABLE_AFTER_S

    assert wait_for(settled, 60, interval=0.2)
    before = engine_status(client)["engine"]
    long = Stream(daemon)  # killed under load: a stream is running
    try:
        assert long.first.wait(30)
        os.kill(before["pid"], signal.SIGKILL)
        # The gateway keeps answering and reports the engine state meanwhile.
        assert client.get("/health").status_code in (200, 503)

        def replaced() -> bool:
            # /health can still say ready for the moment before the gateway sees the death.
            engine = engine_status(client)["engine"]
            return engine["state"] == "ready" and engine["pid"] not in (None, before["pid"])

        # The quick path is shown below by the new pid being the warm standby's; the deadline
        # only has to outlast a loaded machine.
        assert wait_for(replaced, 30)
        response = client.post("/v1/chat/completions", json=chat(max_tokens=2))
        assert response.status_code == 200
        assert long.done.wait(30)  # the cut stream ended (with an error event), not hung
    finally:
        long.close()
    assert client.get("/health").json()["status"] == "ready"
    after = engine_status(client)["engine"]
    assert after["pid"] == before["standby_pid"]  # the warm standby was promoted
    assert after["restarts"] == before["restarts"] + 1
    assert "SIGKILL" in (after["last_exit"] or "")
    assert daemon.pidfile()["engine_pid"] == after["pid"]
    # A new standby follows, so the next crash is as quick.
    assert wait_for(
        lambda: engine_status(client)["engine"]["standby_pid"] not in (None, after["pid"]),
        60,
        interval=0.2,
    )


def test_a_killed_standby_is_replaced(client: httpx.Client) -> None:
    assert wait_for(lambda: engine_status(client)["engine"]["standby_pid"], 60, interval=0.2)
    before = engine_status(client)["engine"]
    os.kill(before["standby_pid"], signal.SIGKILL)
    assert wait_for(
        lambda: engine_status(client)["engine"]["standby_pid"] not in (None, before["standby_pid"]),
        60,
        interval=0.2,
    )
    after = engine_status(client)["engine"]
    # The engine serving was not touched, and a standby's death is no engine restart.
    assert (after["pid"], after["restarts"], after["state"]) == (
        before["pid"],
        before["restarts"],
        "ready",
    )
    assert after["standby_memory_bytes"] > 10_000_000


def test_engine_restart_and_reload_through_the_daemon_functions(
    daemon: Daemon, client: httpx.Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What `apply` calls: the admin API behind the instance token, from the state home.
    from local_ai.errors import ServerError
    from local_ai.server import daemon as control

    monkeypatch.setenv("LOCAL_AI_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(ServerError, match="not running"):
        control.reload_aliases()
    monkeypatch.setenv("LOCAL_AI_HOME", str(daemon.home))
    assert control.reload_aliases() == SERVED
    status = control.status(daemon.manifest)
    assert status["config_hash"] == daemon.pidfile()["config_hash"]
    assert [m["alias"] for m in status["models"]] == SERVED
    assert wait_for(lambda: engine_status(client)["engine"]["standby_pid"], 60, interval=0.2)
    before = engine_status(client)["engine"]

    new_pid = control.restart_engine()

    assert new_pid == before["standby_pid"]  # the warm standby took over
    assert engine_status(client)["engine"]["pid"] == new_pid
    assert engine_status(client)["engine"]["state"] == "ready"
    assert client.post("/v1/chat/completions", json=chat(max_tokens=2)).status_code == 200


def test_logs_have_no_prompts(daemon: Daemon) -> None:
    assert Path(daemon.home / "logs" / "server.log").exists()
    for name in ("engine.log", "server.log"):
        log = daemon.log(name)
        assert "Hello there, how are you today?" not in log, name
        assert "Weather in Paris?" not in log, name


def test_engine_listens_on_no_network_interface(daemon: Daemon) -> None:
    import psutil

    engine = psutil.Process(daemon.pidfile()["engine_pid"])
    listening = [c for c in engine.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening == []  # only the gateway talks to it, over a Unix socket
    unix = [c for c in engine.net_connections(kind="unix") if c.laddr]
    assert any(str(c.laddr).endswith("engine.sock") for c in unix), unix
