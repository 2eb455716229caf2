# ruff: noqa: TID253
"""Omni's request/response adapters on top of the step scheduler.

Omni's `ChatGenerator` runs mlx-lm inline; `ScheduledChatGenerator` keeps Omni's prompt building
(chat template, thinking and tool parsers) but hands the token loop to the scheduler, yields the
final token and its finish reason (Omni drops both), and checks the context before generating.
It is created per request because Omni's `ChatTemplate` keeps per-request parser state.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mlx_omni_server.chat.anthropic.anthropic_messages_adapter import AnthropicMessagesAdapter
from mlx_omni_server.chat.anthropic.anthropic_schema import (
    MessagesRequest,
    RequestTextBlock,
    RequestToolResultBlock,
    RequestToolUseBlock,
    ThinkingConfigDisabled,
    ThinkingConfigEnabled,
)
from mlx_omni_server.chat.mlx.chat_generator import DEFAULT_MAX_TOKENS, ChatGenerator
from mlx_omni_server.chat.mlx.core_types import GenerationResult, GenerationStats, StreamContent
from mlx_omni_server.chat.mlx.tools.chat_template import ChatTemplate
from mlx_omni_server.chat.openai.openai_adapter import OpenAIAdapter

from local_ai.server.compat import EXTRA_BODY_ALLOWED
from local_ai.server.engine.models import LoadedModel
from local_ai.server.engine.scheduler import GenerationCancelled, Job, Scheduler

TOOL_MARKERS = ("<tool_call>", "<function=")


class ContextLengthExceeded(ValueError):
    def __init__(self, prompt_tokens: int, context: int) -> None:
        super().__init__(f"prompt has {prompt_tokens} tokens; the context is {context}")
        self.prompt_tokens = prompt_tokens
        self.context = context


@dataclass(frozen=True)
class Limits:
    context: int
    max_output_tokens: int
    prefix_cache: bool = True


@dataclass
class Prepared:
    tokens: list[int]
    max_tokens: int
    mlx_kwargs: dict[str, Any]


class ScheduledChatGenerator(ChatGenerator):  # type: ignore[misc]
    def __init__(
        self,
        loaded: LoadedModel,
        scheduler: Scheduler,
        limits: Limits,
        cancel: threading.Event | None = None,
    ) -> None:
        super().__init__(loaded.mlx_model)
        self.loaded = loaded
        self.scheduler = scheduler
        self.limits = limits
        self.cancel = cancel or threading.Event()
        self.chat_template = ChatTemplate(loaded.model_type, loaded.tokenizer)
        self.prepared: Prepared | None = None
        self.finish_reason: str | None = None
        self.completion_tokens = 0

    def encode_prompt(self, prompt: str) -> list[int]:
        bos = getattr(self.tokenizer, "bos_token", None)
        # The template already wrote BOS as text; do not add a second one.
        add_special = bos is None or not prompt.startswith(bos)
        return list(self.tokenizer.encode(prompt, add_special_tokens=add_special))

    def count_prompt_tokens(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> int:
        prompt = self._prepare_prompt(messages, tools, dict(template_kwargs or {}), None)
        return len(self.encode_prompt(prompt))

    def prepare(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        sampler: Any = None,
        top_logprobs: int | None = None,
        template_kwargs: dict[str, Any] | None = None,
        enable_prompt_cache: bool = False,
        **kwargs: Any,
    ) -> Prepared:
        """Build and check the prompt; raises ContextLengthExceeded before any generation."""
        if self.prepared is not None:
            return self.prepared
        prompt = self._prepare_prompt(messages, tools, template_kwargs, kwargs.get("json_schema"))
        tokens = self.encode_prompt(prompt)
        context = self.limits.context
        if len(tokens) >= context:
            raise ContextLengthExceeded(len(tokens), context)
        budget = min(max_tokens, self.limits.max_output_tokens, context - len(tokens))
        self.scheduler.check_fits(self.loaded, len(tokens) + budget)
        # Omni passes presence_penalty (-2..2) as mlx-lm's repetition_penalty (>1 penalises).
        presence = kwargs.pop("repetition_penalty", None)
        if isinstance(presence, int | float) and presence > 0:
            kwargs["repetition_penalty"] = 1.0 + presence / 2
        mlx_kwargs = self._create_mlx_kwargs(sampler=sampler, max_tokens=budget, **kwargs)
        if isinstance(sampler, dict):
            mlx_kwargs["sampling"] = sampler  # the scheduler builds a per-request sampler
        self.prepared = Prepared(tokens=tokens, max_tokens=budget, mlx_kwargs=mlx_kwargs)
        return self.prepared

    def generate_stream(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        sampler: Any = None,
        top_logprobs: int | None = None,
        template_kwargs: dict[str, Any] | None = None,
        enable_prompt_cache: bool = False,
        **kwargs: Any,
    ) -> Iterator[Any]:
        prepared = self.prepare(
            messages,
            tools,
            max_tokens,
            sampler,
            None,
            template_kwargs,
            enable_prompt_cache,
            **kwargs,
        )
        if self.cancel.is_set():
            raise GenerationCancelled
        job = Job(
            model=self.loaded,
            prompt=prepared.tokens,
            kwargs=prepared.mlx_kwargs,
            use_prefix_cache=self.limits.prefix_cache,
            cancelled=self.cancel,
        )
        self.scheduler.submit(job)
        for index, event in enumerate(job.events(), start=1):
            parsed = self.chat_template.stream_parse_chat_result(event.text)
            if parsed.thinking is not None:
                content = StreamContent(
                    reasoning_delta=parsed.thinking, token=event.token, chunk_index=index
                )
            else:
                text = parsed.content if parsed.content is not None else event.text
                content = StreamContent(text_delta=text, token=event.token, chunk_index=index)
            self.finish_reason = event.finish_reason
            self.completion_tokens = event.generation_tokens
            yield GenerationResult(
                content=content,
                finish_reason=event.finish_reason,
                stats=GenerationStats(
                    prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.generation_tokens,
                    cache_hit_tokens=event.cached_tokens,
                    prompt_tps=event.prompt_tps,
                    generation_tps=event.generation_tps,
                    peak_memory=event.peak_memory,
                ),
                logprobs=None,
                from_draft=False,
            )


class LocalOpenAIAdapter(OpenAIAdapter):  # type: ignore[misc]
    def _prepare_generation_params(self, request: Any) -> dict[str, Any]:
        params: dict[str, Any] = super()._prepare_generation_params(request)
        params["template_kwargs"] = {
            k: v for k, v in params["template_kwargs"].items() if k in EXTRA_BODY_ALLOWED
        }
        params["top_logprobs"] = None  # logprobs would need MLX work outside the MLX thread
        # Omni drops these; the scheduler applies them per request (see scheduler.Job).
        params["stop"] = request.stop
        params["seed"] = request.seed
        return params


# --- Anthropic ----------------------------------------------------------------------------------


def _split_marker(buffer: str) -> tuple[str, str, bool]:
    """(text safe to emit, text held back, a tool call started)."""
    positions = [p for p in (buffer.find(m) for m in TOOL_MARKERS) if p >= 0]
    if positions:
        return buffer[: min(positions)], "", True
    hold = 0
    for marker in TOOL_MARKERS:
        for n in range(min(len(marker) - 1, len(buffer)), 0, -1):
            if buffer.endswith(marker[:n]):
                hold = max(hold, n)
                break
    return buffer[: len(buffer) - hold], buffer[len(buffer) - hold :], False


def _tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


class LocalAnthropicAdapter(AnthropicMessagesAdapter):  # type: ignore[misc]
    """Omni's adapter with multi-block tool use, tool_use streaming and correct sampling."""

    def _convert_system_to_messages(self, system: Any, messages: list[Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if system:
            text = system if isinstance(system, str) else "\n".join(b.text for b in system)
            out.append({"role": "system", "content": text})
        for msg in messages:
            role = msg.role.value
            if isinstance(msg.content, str):
                out.append({"role": role, "content": msg.content})
                continue
            texts: list[str] = []
            tool_calls: list[dict[str, Any]] = []
            for block in msg.content:
                if isinstance(block, RequestTextBlock):
                    texts.append(block.text)
                elif isinstance(block, RequestToolUseBlock):
                    tool_calls.append(
                        {
                            "id": block.id,
                            "type": "function",
                            "function": {"name": block.name, "arguments": block.input},
                        }
                    )
                elif isinstance(block, RequestToolResultBlock):
                    # Each result becomes its own tool message, in order, before any user text.
                    if isinstance(block.content, str):
                        result = block.content
                    else:
                        result = "\n".join(
                            b.text for b in block.content if isinstance(b, RequestTextBlock)
                        )
                    tool_msg: dict[str, Any] = {
                        "role": "tool",
                        "tool_call_id": block.tool_use_id,
                        "content": result,
                    }
                    if block.is_error:
                        tool_msg["name"] = "error"
                    out.append(tool_msg)
            if role == "assistant":
                entry: dict[str, Any] = {"role": role, "content": "\n".join(texts)}
                if tool_calls:
                    entry["tool_calls"] = tool_calls
                out.append(entry)
            elif texts:
                out.append({"role": role, "content": "\n".join(texts)})
        return out

    def _prepare_generation_params(self, request: MessagesRequest) -> dict[str, Any]:
        params: dict[str, Any] = super()._prepare_generation_params(request)
        # Omni writes `temperature or 1.0`, turning an explicit 0 (greedy) into 1.
        params["sampler"] = {
            "temp": 1.0 if request.temperature is None else request.temperature,
            "top_p": 1.0 if request.top_p is None else request.top_p,
            "top_k": request.top_k or 0,
        }
        params["stop"] = request.stop_sequences  # Omni drops them; see scheduler.Job
        if isinstance(request.thinking, ThinkingConfigEnabled):
            params["template_kwargs"] = {"enable_thinking": True}
        elif isinstance(request.thinking, ThinkingConfigDisabled):
            params["template_kwargs"] = {"enable_thinking": False}
        return params

    def count_tokens(self, request: MessagesRequest) -> int:
        params = self._prepare_generation_params(request)
        gen: ScheduledChatGenerator = self._generate_wrapper
        return gen.count_prompt_tokens(
            params["messages"], params["tools"], params["template_kwargs"]
        )

    def stream_events(self, request: MessagesRequest) -> Iterator[dict[str, Any]]:
        """Anthropic stream events as dicts, tool calls as tool_use blocks with input_json_delta."""
        params = self._prepare_generation_params(request)
        gen: ScheduledChatGenerator = self._generate_wrapper
        prepared = gen.prepare(**params)
        input_tokens = len(prepared.tokens)
        yield {
            "type": "message_start",
            "message": {
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": request.model,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 0},
            },
        }
        has_tools = bool(params.get("tools"))
        index = -1  # index of the last block started
        open_kind: str | None = None
        held = ""
        in_tool = False
        full = ""

        def close_open() -> Iterator[dict[str, Any]]:
            nonlocal open_kind
            if open_kind == "thinking":
                yield {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "signature_delta", "signature": ""},
                }
            if open_kind is not None:
                yield {"type": "content_block_stop", "index": index}
            open_kind = None

        def open_block(kind: str) -> Iterator[dict[str, Any]]:
            nonlocal index, open_kind
            if open_kind == kind:
                return
            yield from close_open()
            index += 1
            open_kind = kind
            block: dict[str, Any] = (
                {"type": "thinking", "thinking": ""}
                if kind == "thinking"
                else {"type": "text", "text": ""}
            )
            yield {"type": "content_block_start", "index": index, "content_block": block}

        def delta(kind: str, value: str) -> dict[str, Any]:
            key = "thinking" if kind == "thinking_delta" else "text"
            return {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": kind, key: value},
            }

        for chunk in gen.generate_stream(**params):
            reasoning = chunk.content.reasoning_delta
            text = chunk.content.text_delta
            if reasoning:
                full += reasoning
                yield from open_block("thinking")
                yield delta("thinking_delta", reasoning)
            elif text:
                full += text
                if in_tool:
                    continue
                emit = text
                if has_tools:
                    emit, held, in_tool = _split_marker(held + text)
                if emit:
                    yield from open_block("text")
                    yield delta("text_delta", emit)
        if held and not in_tool:
            yield from open_block("text")
            yield delta("text_delta", held)
        tool_calls: list[Any] = []
        if has_tools and full:
            tool_calls = gen.chat_template.parse_chat_response(full).tool_calls or []
        if index < 0 and not tool_calls:
            yield from open_block("text")  # a message always has at least one block
        yield from close_open()
        for call in tool_calls:
            index += 1
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {
                    "type": "tool_use",
                    "id": _tool_use_id(),
                    "name": call.name,
                    "input": {},
                },
            }
            yield {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": json.dumps(call.arguments)},
            }
            yield {"type": "content_block_stop", "index": index}
        if tool_calls:
            stop_reason = "tool_use"
        elif gen.finish_reason == "length":
            stop_reason = "max_tokens"
        else:
            stop_reason = "end_turn"
        yield {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"input_tokens": input_tokens, "output_tokens": gen.completion_tokens},
        }
        yield {"type": "message_stop"}
