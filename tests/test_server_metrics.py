"""`GET /metrics` and `POST /v1/responses` against a real daemon: traffic from the official SDKs
with the User-Agents of Claude Code, Zed and Codex, scraped with prometheus-client's own text
parser; the Responses API through the official `openai` SDK and a recorded Codex request."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from local_ai.server.gateway.metrics import client_of
from tests.server_helpers import (
    TOOL_FUNCTION,
    TOOL_NAME,
    Daemon,
    build_chat_model,
    build_tool_model,
    claude_code_body,
    free_port,
    wait_for,
    write_manifest,
)

API_KEY = "metrics-key-0123456789"
AUTH = {"authorization": f"Bearer {API_KEY}"}
# As the clients send them (Claude Code's CLI, Zed's global HTTP client, Codex's reqwest client).
CLAUDE_UA = "claude-cli/2.0.14 (external, cli)"
ZED_UA = "Zed/0.207.3 (macos; aarch64)"
CODEX_UA = "codex_cli_rs/0.46.0 (Mac OS 15.6.1; arm64) Apple_Terminal/455.1"
CHAT = "/v1/chat/completions"
MESSAGES = "/anthropic/v1/messages"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("metrics")
    port = free_port()
    manifest = write_manifest(
        root,
        port=port,
        models={"tiny": build_chat_model(root / "tiny"), "tool": build_tool_model(root / "tool")},
        context=2048,
        server_extra='api_key_env = "LOCAL_AI_TEST_KEY"\npreload = ["tiny"]',
        engine_extra="max_queued_requests = 0\nmax_batch_size = 4",  # max_active follows the batch
    )
    d = Daemon(
        home=root / "home", manifest=manifest, port=port, extra_env={"LOCAL_AI_TEST_KEY": API_KEY}
    )
    with d.running():
        yield d


@pytest.fixture(scope="module")
def client(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon.url, headers=AUTH, timeout=60, trust_env=False) as c:
        yield c


def scrape(client: httpx.Client) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def val(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return val(after, name, **labels) - val(before, name, **labels)


def claude_code_call(claude: Any, billing: str, *, stream: bool) -> Any:
    """Claude Code's body through the SDK (fields the SDK does not name go as extra_body), greedy:
    a sampled end token first would leave a stream without its first token or decode rate."""
    body = claude_code_body(billing, stream) | {"temperature": 0}
    named = {k: body.pop(k) for k in ("model", "max_tokens", "messages", "stream")}
    return claude.messages.create(**named, extra_body=body)


def test_clients_are_told_apart_by_user_agent() -> None:
    assert client_of(CLAUDE_UA) == "claude-code"
    assert client_of("claude-cli/2.0.0 (external, claude-vscode)") == "claude-code"
    assert client_of(ZED_UA) == "zed"
    assert client_of(CODEX_UA) == "codex"
    assert client_of("goose/1.9.0") == "goose"
    assert client_of("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605") == "browser"
    assert client_of("OpenAI/Python 1.99.0") == "other"
    assert client_of(None) == "other"


def test_metrics_need_the_api_key(daemon: Daemon) -> None:
    with httpx.Client(base_url=daemon.url, timeout=30, trust_env=False) as anon:
        assert anon.get("/metrics").status_code == 401
        admin = anon.get("/metrics", headers={"authorization": f"Bearer {daemon.token()}"})
        assert admin.status_code == 200
        keyed = anon.get("/metrics", headers={"x-api-key": API_KEY})
        assert keyed.status_code == 200
        assert "local_ai_requests_total" in keyed.text


def test_sdk_traffic_moves_counters_histograms_and_cache_figures(
    daemon: Daemon, client: httpx.Client
) -> None:
    import anthropic
    import openai

    before = scrape(client)

    zed = openai.OpenAI(
        base_url=f"{daemon.url}/v1",
        api_key=API_KEY,
        max_retries=0,
        default_headers={"User-Agent": ZED_UA},
    )
    messages: Any = [{"role": "user", "content": "Write a haiku about tea."}]
    plain = zed.chat.completions.create(
        model="tiny", messages=messages, max_tokens=6, temperature=0
    )
    assert plain.usage is not None
    # Streamed without include_usage: the client gets no usage chunk, the metrics still count.
    chunks = list(
        zed.chat.completions.create(
            model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True
        )
    )
    assert chunks and all(c.usage is None for c in chunks)

    codex = openai.OpenAI(
        base_url=f"{daemon.url}/v1",
        api_key=API_KEY,
        max_retries=0,
        default_headers={"User-Agent": CODEX_UA},
    )
    codex_chunks = list(
        codex.chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    codex_usage = next(c.usage for c in codex_chunks if c.usage is not None)

    claude = anthropic.Anthropic(
        base_url=f"{daemon.url}/anthropic",
        api_key=API_KEY,
        max_retries=0,
        default_headers={"User-Agent": CLAUDE_UA},
    )
    # Claude Code's shape: only the billing line differs, so the prefix comes from the cache.
    reads: list[tuple[int, int]] = []  # (input tokens, of which read from the cache)
    for billing in ("aaa", "bbb"):
        message = claude_code_call(claude, billing, stream=False)
        reads.append((message.usage.input_tokens, message.usage.cache_read_input_tokens or 0))
    final: Any = None
    for event in claude_code_call(claude, "ccc", stream=True):
        if event.type == "message_delta":
            final = event.usage
    assert final is not None
    reads.append((final.input_tokens, final.cache_read_input_tokens or 0))
    assert reads[1][1] > reads[1][0] // 2 and reads[2][1] > reads[2][0] // 2, reads

    after = scrape(client)
    requests = "local_ai_requests_total"
    assert (
        delta(before, after, requests, endpoint=CHAT, alias="tiny", status="200", client="zed") == 2
    )
    assert (
        delta(before, after, requests, endpoint=CHAT, alias="tiny", status="200", client="codex")
        == 1
    )
    assert (
        delta(
            before,
            after,
            requests,
            endpoint=MESSAGES,
            alias="tiny",
            status="200",
            client="claude-code",
        )
        == 3
    )
    # TTFT is observed for streams; end-to-end latency for every generation.
    ttft, duration = (
        "local_ai_time_to_first_token_seconds_count",
        "local_ai_request_duration_seconds_count",
    )
    assert delta(before, after, ttft, endpoint=CHAT, alias="tiny", client="zed") == 1
    assert delta(before, after, duration, endpoint=CHAT, alias="tiny", client="zed") == 2
    assert delta(before, after, ttft, endpoint=MESSAGES, alias="tiny", client="claude-code") == 1
    assert (
        delta(before, after, duration, endpoint=MESSAGES, alias="tiny", client="claude-code") == 3
    )
    inf = {"endpoint": MESSAGES, "alias": "tiny", "client": "claude-code", "le": "+Inf"}
    assert delta(before, after, "local_ai_time_to_first_token_seconds_bucket", **inf) == 1
    assert (
        delta(
            before,
            after,
            "local_ai_time_to_first_token_seconds_sum",
            **{k: v for k, v in inf.items() if k != "le"},
        )
        > 0
    )
    # Token figures are the engine's usage, exactly.
    out = "local_ai_output_tokens_total"
    assert (
        delta(before, after, out, alias="tiny", client="zed") == plain.usage.completion_tokens + 8
    )
    assert delta(before, after, out, alias="tiny", client="codex") == codex_usage.completion_tokens
    prompt = "local_ai_prompt_tokens_total"
    cached = sum(c for _, c in reads)
    computed = sum(i - c for i, c in reads)
    assert (
        delta(before, after, prompt, alias="tiny", client="claude-code", source="cache") == cached
    )
    assert (
        delta(before, after, prompt, alias="tiny", client="claude-code", source="computed")
        == computed
    )
    assert cached > computed  # the cache-hit ratio Claude Code users look at
    assert delta(before, after, "local_ai_decode_tokens_per_second_count", alias="tiny") == 3
    # Engine figures, read at scrape time.
    for kind in ("active", "peak", "cache"):
        assert ("local_ai_engine_memory_bytes", frozenset({("kind", kind)})) in after
    assert val(after, "local_ai_engine_memory_bytes", kind="peak") > 0
    assert val(after, "local_ai_model_loads_total", alias="tiny") >= 1  # preloaded
    assert val(after, "local_ai_model_load_seconds_total", alias="tiny") > 0
    assert val(after, "local_ai_engine_up") == 1

    # The same traffic, per minute, for the page's charts and `server status` (not anonymous).
    activity = client.get("/api/status").json()["activity"]
    hour = activity["hour"]
    clients = ("zed", "codex", "claude-code")
    # This module's first generations: the hour holds exactly them.
    assert hour["output_tokens"] == sum(
        delta(before, after, out, alias="tiny", client=c) for c in clients
    )
    assert 0 < hour["cache_hit"] < 1 and hour["ttft_s"] > 0
    assert sum(m["output_tokens"] for m in activity["minutes"]) == hour["output_tokens"]
    with httpx.Client(base_url=daemon.url, timeout=30, trust_env=False) as anon:
        assert "activity" not in anon.get("/api/status").json()
    shown = daemon.cli("server", "status")
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if x.strip().startswith("last hour:"))
    assert f"{hour['output_tokens']} tokens" in line
    assert f"prompt cache hits {hour['cache_hit'] * 100:.0f}%" in line


def _stream(daemon: Daemon, done: threading.Event, statuses: list[int]) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Go on."}],
        "max_tokens": 1900,
        "temperature": 0,
        "stream": True,
    }
    with (
        httpx.Client(base_url=daemon.url, headers=AUTH, timeout=60, trust_env=False) as c,
        c.stream("POST", CHAT, json=body) as response,
    ):
        statuses.append(response.status_code)
        for _ in response.iter_lines():
            if done.is_set():
                break


def test_streams_batch_and_busy_503s(daemon: Daemon, client: httpx.Client) -> None:
    before = scrape(client)
    done = threading.Event()
    statuses: list[int] = []
    threads = [
        threading.Thread(target=_stream, args=(daemon, done, statuses), daemon=True)
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    try:
        # max_active is 4 and nothing may queue: four streams fill the gateway.
        def full() -> bool:
            s = scrape(client)
            return (
                val(s, "local_ai_active_streams") == 4 and val(s, "local_ai_engine_batch_size") == 4
            )

        assert wait_for(full, 60, interval=0.2)
        refused = client.post(
            CHAT, json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
        )
        assert refused.status_code == 503
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert statuses == [200] * 4
    assert wait_for(lambda: val(scrape(client), "local_ai_active_streams") == 0, 30)
    after = scrape(client)
    assert delta(before, after, "local_ai_unavailable_total", reason="busy") == 1
    assert (
        delta(
            before,
            after,
            "local_ai_requests_total",
            endpoint=CHAT,
            alias="tiny",
            status="503",
            client="other",
        )
        == 1
    )


WEATHER_TOOL: Any = {"type": "function", **TOOL_FUNCTION}


def responses_sdk(daemon: Daemon) -> Any:
    import openai

    return openai.OpenAI(
        base_url=f"{daemon.url}/v1",
        api_key=API_KEY,
        max_retries=0,
        default_headers={"User-Agent": CODEX_UA},
    )


def test_responses_text_stream_and_not(daemon: Daemon, client: httpx.Client) -> None:
    sdk = responses_sdk(daemon)
    before = scrape(client)
    # Greedy: a sampled end token would end it early, a sampled <think> would leave no text.
    answer = sdk.responses.create(
        model="tiny",
        instructions="Be brief.",
        input="Say hello.",
        max_output_tokens=6,
        temperature=0,
    )
    assert answer.object == "response" and answer.model == "tiny"
    # The tiny model never ends by itself: it stops at the limit, as the API says it should.
    assert answer.status == "incomplete"
    assert answer.incomplete_details is not None
    assert answer.incomplete_details.reason == "max_output_tokens"
    assert answer.output[0].type == "message" and answer.output_text
    assert answer.usage is not None and answer.usage.output_tokens == 6
    assert answer.usage.input_tokens > 0

    events = list(
        sdk.responses.create(
            model="tiny", input="Say hello.", max_output_tokens=6, temperature=0, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    done = next(e for e in events if e.type == "response.output_text.done")
    assert deltas and "".join(deltas) == done.text
    assert kinds.index("response.output_item.added") < kinds.index("response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == done.text and final.usage.output_tokens == 6
    after = scrape(client)
    labels = {"endpoint": "/v1/responses", "alias": "tiny"}
    requests = "local_ai_requests_total"
    assert delta(before, after, requests, status="200", client="codex", **labels) == 2
    assert delta(before, after, "local_ai_output_tokens_total", alias="tiny", client="codex") == 12
    ttft = "local_ai_time_to_first_token_seconds_count"
    assert delta(before, after, ttft, client="codex", **labels) == 2


def test_responses_tool_call_and_its_output_in_a_second_request(daemon: Daemon) -> None:
    sdk = responses_sdk(daemon)
    first = sdk.responses.create(
        model="tool", input="What is the weather in Paris?", tools=[WEATHER_TOOL]
    )
    assert first.status == "completed"
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == TOOL_NAME and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id
    # The output goes back with previous_response_id: the server supplies the earlier turns.
    second = sdk.responses.create(
        model="tool",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"}],
        tools=[WEATHER_TOOL],
    )
    assert second.status == "completed" and second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    # Streamed, the call arrives as an output item with its arguments.
    events = list(
        sdk.responses.create(model="tool", input="Weather?", tools=[WEATHER_TOOL], stream=True)
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed"
    done = [e for e in events if e.type == "response.output_item.done"]
    assert done[-1].item.type == "function_call"
    assert json.loads(done[-1].item.arguments) == {"city": "Paris"}  # type: ignore[union-attr]


def test_responses_unknown_previous_id_and_bad_input_are_400(daemon: Daemon) -> None:
    import openai

    sdk = responses_sdk(daemon)
    with pytest.raises(openai.BadRequestError) as unknown:
        sdk.responses.create(model="tiny", input="x", previous_response_id="resp_nope")
    assert "resp_nope" in str(unknown.value)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.responses.create(model="tiny", input=[{"type": "image_generation_call", "id": "x"}])  # type: ignore[list-item]
    assert "image_generation_call" in str(bad.value)


def test_thinking_and_parallel_calls_become_output_items() -> None:
    """What a thinking model's chat stream (as the engine sends it) turns into, item by item."""
    from openai.types.responses import Response, ResponseStreamEvent
    from pydantic import TypeAdapter

    from local_ai.server.gateway.responses import ResponseBuilder, ResponseStore, to_chat

    request = {"model": "m", "input": "Plan, then call both.", "stream": True}
    chat, conversation = to_chat(request, ResponseStore())
    assert (
        chat["messages"] == conversation == [{"role": "user", "content": "Plan, then call both."}]
    )
    builder = ResponseBuilder("m", request)
    chunks: list[dict[str, Any]] = [
        {"choices": [{"delta": {"role": "assistant", "reasoning": "First "}}]},
        {"choices": [{"delta": {"reasoning": "think."}}]},
        {"choices": [{"delta": {"content": "Calling."}}]},
        {
            "choices": [
                {
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_a",
                                "function": {"name": "f", "arguments": "{}"},
                            },
                            {
                                "index": 1,
                                "id": "call_b",
                                "function": {"name": "g", "arguments": '{"x":'},
                            },
                        ]
                    },
                    "finish_reason": None,
                }
            ]
        },
        {"choices": [{"delta": {"tool_calls": [{"index": 1, "function": {"arguments": "1}"}}]}}]},
        {
            "choices": [{"delta": {}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
        },
    ]
    events = builder.start() + [e for c in chunks for e in builder.feed(c)] + builder.finish()
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds.count("response.reasoning_text.delta") == 2
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    # Every event as the official SDK's strict models define it.
    checked = TypeAdapter(ResponseStreamEvent)
    for event in events:
        checked.validate_python(event)
    final = Response.model_validate(events[-1]["response"])
    assert final.status == "completed"
    assert [item.type for item in final.output] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    reasoning = final.output[0]
    assert reasoning.content is not None and reasoning.content[0].text == "First think."  # type: ignore[union-attr]
    assert final.output_text == "Calling."
    calls = [(i.call_id, i.name, i.arguments) for i in final.output[2:]]  # type: ignore[union-attr]
    assert calls == [("call_a", "f", "{}"), ("call_b", "g", '{"x":1}')]
    assert final.usage is not None and final.usage.total_tokens == 16
    # The answer continues the conversation as one assistant message with both calls.
    (message,) = builder.messages()
    assert message["content"] == "Calling." and len(message["tool_calls"]) == 2


def test_a_recorded_codex_request(daemon: Daemon, client: httpx.Client) -> None:
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    body = json.loads(
        (Path(__file__).parent / "data" / "codex" / "responses_request.json").read_text()
    )
    headers = {
        "user-agent": CODEX_UA,
        "originator": "codex_cli_rs",
        "openai-beta": "responses=experimental",
        "session_id": "0199a8f2-7c1e-7d52-9a43-1f0e5b2d9c61",
        "accept": "text/event-stream",
    }
    with client.stream("POST", "/v1/responses", json=body, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = []
    for block in text.strip().split("\n\n"):
        kind, data = block.split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        events.append(event)
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.completed"
    checked = TypeAdapter(ResponseStreamEvent)  # the SDK's strict models, field by field
    for event in events:
        checked.validate_python(event)
    final = events[-1]["response"]
    # The scripted model calls its tool again; Codex would run it and send the output back.
    assert final["output"][-1]["type"] == "function_call"
    assert final["output"][-1]["name"] == TOOL_NAME
    assert final["usage"]["input_tokens"] > 50  # instructions and every input item reached it


def test_engine_restarts_are_counted(daemon: Daemon, client: httpx.Client) -> None:
    before = val(scrape(client), "local_ai_engine_restarts_total")
    pid = client.get("/api/status").json()["engine"]["pid"]
    os.kill(pid, signal.SIGKILL)

    def replaced() -> bool:
        s = scrape(client)
        return (
            val(s, "local_ai_engine_restarts_total") == before + 1
            and val(s, "local_ai_engine_up") == 1
        )

    assert wait_for(replaced, 60, interval=0.2)
