"""The OpenAI Responses API (`POST /v1/responses`, what Codex speaks) on the engine's chat path.

A request becomes a chat completion (instructions → system message, input items → messages,
function tools → chat tools), so the engine's prompt building and tool-call parsing serve both
APIs. The engine's streamed chunks become Responses events: reasoning, message text and
function calls as output items, usage at the end. A response's conversation is kept in memory
(bounded) for `previous_response_id`.
"""

from __future__ import annotations

import collections
import json
import time
import uuid
from typing import Any

MAX_STORED = 256  # responses kept for previous_response_id (oldest dropped first)
# Request fields that carry over to the chat completion unchanged.
PASSED = ("temperature", "top_p", "parallel_tool_calls", "user")


class ResponsesError(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ResponseStore:
    """Conversations (as chat messages, instructions excluded) by response id, most recent last."""

    def __init__(self, limit: int = MAX_STORED) -> None:
        self.limit = limit
        self._items: collections.OrderedDict[str, list[dict[str, Any]]] = collections.OrderedDict()

    def get(self, response_id: str) -> list[dict[str, Any]] | None:
        return self._items.get(response_id)

    def put(self, response_id: str, messages: list[dict[str, Any]]) -> None:
        self._items[response_id] = messages
        while len(self._items) > self.limit:
            self._items.popitem(last=False)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ResponsesError(f"{where} must be a string or a list of parts", where)
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            texts.append(str(part.get("text", "")))
        else:
            raise ResponsesError(f"{where}[{i}]: part type {kind!r} is not supported", where)
    return "".join(texts)


def input_messages(items: Any) -> list[dict[str, Any]]:
    """Chat messages for a request's `input` (a string or a list of items)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise ResponsesError("input must be a string or a list of items", "input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise ResponsesError(f"{where} must be an object", where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise ResponsesError(f"{where}.role {role!r} is not supported", f"{where}.role")
            out.append({"role": role, "content": _text(item.get("content", ""), where)})
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id") or item.get("id") or ""),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            last = out[-1] if out else None
            if last and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant message
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            text = output if isinstance(output, str) else _text(output, f"{where}.output")
            out.append({"role": "tool", "tool_call_id": str(item.get("call_id")), "content": text})
        elif kind == "reasoning":
            continue  # the model's earlier thinking: chat templates drop it from history too
        else:
            raise ResponsesError(f"{where}: item type {kind!r} is not supported", where)
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    """Function tools as chat tools; built-in tools (web search, custom grammars) are dropped,
    as no local model can run them."""
    out = []
    for tool in tools or []:
        if isinstance(tool, dict) and tool.get("type") == "function":
            function = {"name": tool.get("name"), "parameters": tool.get("parameters") or {}}
            if tool.get("description"):
                function["description"] = tool["description"]
            out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice if choice in ("auto", "none", "required") else None


def to_chat(body: dict[str, Any], store: ResponseStore) -> tuple[dict[str, Any], list[Any]]:
    """(chat completion body, the conversation without instructions, to store with the answer)."""
    history: list[dict[str, Any]] = []
    previous = body.get("previous_response_id")
    if previous is not None:
        found = store.get(str(previous))
        if found is None:
            raise ResponsesError(
                f"previous response {previous!r} is not known to this server (responses are kept "
                f"in memory, the last {store.limit}, until the server restarts)",
                "previous_response_id",
            )
        history = found
    conversation = [*history, *input_messages(body.get("input", []))]
    if not conversation:
        raise ResponsesError("input must not be empty", "input")
    messages = list(conversation)
    instructions = body.get("instructions")
    if instructions:
        messages.insert(0, {"role": "system", "content": _text(instructions, "instructions")})
    chat: dict[str, Any] = {"messages": messages, "stream": True}
    chat["stream_options"] = {"include_usage": True}
    limit = body.get("max_output_tokens")
    if limit is not None:
        chat["max_tokens"] = limit
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            chat["tool_choice"] = choice
    chat |= {k: body[k] for k in PASSED if body.get(k) is not None}
    return chat, conversation


class ResponseBuilder:
    """Turns the engine's chat completion chunks into Responses events and the final response."""

    def __init__(self, alias: str, request: dict[str, Any]) -> None:
        self.id = _new_id("resp")
        self.request = request
        self.alias = alias
        self.created = int(time.time())
        self.output: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.status = "in_progress"
        self.incomplete: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self._seq = 0
        self._open: dict[str, Any] | None = None  # the reasoning or message item being written
        self._calls: dict[int, dict[str, Any]] = {}

    # --- events ----------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def response(self) -> dict[str, Any]:
        r = self.request
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": self.status,
            "model": self.alias,
            "output": self.output,
            "output_text": "".join(
                part["text"]
                for item in self.output
                if item["type"] == "message"
                for part in item["content"]
            ),
            "usage": self.usage,
            "error": self.error,
            "incomplete_details": self.incomplete,
            "instructions": r.get("instructions"),
            "previous_response_id": r.get("previous_response_id"),
            "parallel_tool_calls": r.get("parallel_tool_calls", True),
            "tool_choice": r.get("tool_choice", "auto"),
            "tools": r.get("tools") or [],
            "temperature": r.get("temperature"),
            "top_p": r.get("top_p"),
            "max_output_tokens": r.get("max_output_tokens"),
            "store": r.get("store", True),
            "metadata": r.get("metadata") or {},
            "text": {"format": {"type": "text"}},
            "reasoning": r.get("reasoning") or {"effort": None, "summary": None},
        }

    def start(self) -> list[dict[str, Any]]:
        snapshot = self.response()
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def _open_item(self, kind: str) -> list[dict[str, Any]]:
        if self._open is not None and self._open["type"] == kind:
            return []
        events = self._close_item()
        index = len(self.output)
        item: dict[str, Any]
        part: dict[str, Any]
        if kind == "reasoning":
            item = {"id": _new_id("rs"), "type": "reasoning", "summary": [], "content": []}
            part = {"type": "reasoning_text", "text": ""}
        else:
            item = {
                "id": _new_id("msg"),
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            part = {"type": "output_text", "text": "", "annotations": []}
        self.output.append(item)
        self._open = item
        events.append(
            self._event("response.output_item.added", item=_copy(item), output_index=index)
        )
        if kind == "message":
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=dict(part),
                )
            )
        item["content"].append(part)
        return events

    def _close_item(self) -> list[dict[str, Any]]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = self.output.index(item)
        if item["type"] == "reasoning":
            text = item["content"][0]["text"]
            events = [
                self._event(
                    "response.reasoning_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=text,
                )
            ]
        else:
            part = item["content"][0]
            item["status"] = "completed"
            common = {"item_id": item["id"], "output_index": index, "content_index": 0}
            events = [
                self._event("response.output_text.done", text=part["text"], logprobs=[], **common),
                self._event("response.content_part.done", part=_copy(part), **common),
            ]
        events.append(
            self._event("response.output_item.done", item=_copy(item), output_index=index)
        )
        return events

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """Events for one chat completion chunk from the engine."""
        if isinstance(chunk.get("error"), dict):
            self.error = {
                "code": "server_error",
                "message": str(chunk["error"].get("message", "generation failed")),
            }
            return []
        if chunk.get("usage"):
            u = chunk["usage"]
            cached = int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            self.usage = {
                "input_tokens": int(u.get("prompt_tokens") or 0),
                "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
                "output_tokens": int(u.get("completion_tokens") or 0),
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": int(u.get("total_tokens") or 0),
            }
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning") or delta.get("reasoning_content")
            if reasoning:
                events += self._open_item("reasoning")
                assert self._open is not None
                self._open["content"][0]["text"] += reasoning
                events.append(self._delta("response.reasoning_text.delta", reasoning))
            if delta.get("content"):
                events += self._open_item("message")
                assert self._open is not None
                self._open["content"][0]["text"] += delta["content"]
                events.append(self._delta("response.output_text.delta", delta["content"]))
            for n, call in enumerate(delta.get("tool_calls") or []):
                slot = self._calls.setdefault(
                    int(call.get("index", n)), {"id": None, "name": "", "arguments": ""}
                )
                function = call.get("function") or {}
                slot["id"] = slot["id"] or call.get("id")
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason") == "length":
                self.incomplete = {"reason": "max_output_tokens"}
        return events

    def _delta(self, kind: str, text: str) -> dict[str, Any]:
        assert self._open is not None
        fields: dict[str, Any] = {
            "item_id": self._open["id"],
            "output_index": self.output.index(self._open),
            "content_index": 0,
            "delta": text,
        }
        if kind == "response.output_text.delta":
            fields["logprobs"] = []
        return self._event(kind, **fields)

    def finish(self) -> list[dict[str, Any]]:
        """The closing events: open items done, function calls, and the final response."""
        events = self._close_item()
        for _, call in sorted(self._calls.items()):
            index = len(self.output)
            item = {
                "id": _new_id("fc"),
                "type": "function_call",
                "status": "completed",
                "call_id": call["id"] or _new_id("call"),
                "name": call["name"],
                "arguments": call["arguments"],
            }
            self.output.append(item)
            pending = {**item, "status": "in_progress", "arguments": ""}
            common = {"item_id": item["id"], "output_index": index}
            events += [
                self._event("response.output_item.added", item=pending, output_index=index),
                self._event(
                    "response.function_call_arguments.delta", delta=item["arguments"], **common
                ),
                self._event(
                    "response.function_call_arguments.done",
                    arguments=item["arguments"],
                    name=item["name"],
                    **common,
                ),
                self._event("response.output_item.done", item=_copy(item), output_index=index),
            ]
        if self.error is not None:
            self.status = "failed"
            events.append(self._event("response.failed", response=self.response()))
        elif self.incomplete is not None:
            self.status = "incomplete"
            events.append(self._event("response.incomplete", response=self.response()))
        else:
            self.status = "completed"
            events.append(self._event("response.completed", response=self.response()))
        return events

    def messages(self) -> list[dict[str, Any]]:
        """The answer as chat messages, to continue the conversation from."""
        text = "".join(
            part["text"]
            for item in self.output
            if item["type"] == "message"
            for part in item["content"]
        )
        calls = [
            {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            for item in self.output
            if item["type"] == "function_call"
        ]
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message["tool_calls"] = calls
        return [message]


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(item))
    return copied


def sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
