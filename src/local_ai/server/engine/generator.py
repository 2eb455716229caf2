# ruff: noqa: TID253
"""Omni's request adapters on top of the step scheduler, with local-ai's tool-call handling.

Omni supplies the request schemas, sampling parameters and chat-template rendering;
`ScheduledChatGenerator` hands the token loop to the scheduler, checks the context before
generating, and splits the output into text, reasoning and tool calls with `toolcalls` (the
family's native format, chosen from the model's template). The adapters turn those pieces into
OpenAI and Anthropic responses, streamed or not. A generator is created per request.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

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
from mlx_omni_server.chat.mlx.tools.chat_template import ChatTemplate
from mlx_omni_server.chat.openai.openai_adapter import OpenAIAdapter

from local_ai.server.compat import EXTRA_BODY_ALLOWED
from local_ai.server.engine import toolcalls
from local_ai.server.engine.loaded import LoadedModel
from local_ai.server.engine.scheduler import GenerationCancelled, Job, Scheduler


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


@dataclass(frozen=True)
class ToolChoice:
    """The request's `tool_choice`, for either API: "none" offers no tools; "required" (Anthropic
    "any") and a named tool make the family's call marker the first token when it is one token."""

    mode: Literal["auto", "none", "required"] = "auto"
    name: str | None = None  # with "required": the only tool offered

    @classmethod
    def from_openai(cls, choice: Any) -> ToolChoice:
        value = getattr(choice, "value", choice)
        if value in ("none", "required"):
            return cls(value)
        function = getattr(choice, "function", None)
        if isinstance(function, dict) and function.get("name"):
            return cls("required", str(function["name"]))
        return cls()

    @classmethod
    def from_anthropic(cls, choice: Any) -> ToolChoice:
        kind = getattr(choice, "type", None)
        if kind == "none":
            return cls("none")
        if kind == "any":
            return cls("required")
        if kind == "tool":
            return cls("required", str(choice.name))
        return cls()


def _tool_name(tool: dict[str, Any]) -> str | None:
    function = tool.get("function")
    return function.get("name") if isinstance(function, dict) else tool.get("name")


def _one_token(tokenizer: Any, marker: str) -> int | None:
    """The id of `marker` when the vocabulary holds it as a single token."""
    if not marker:
        return None
    ids = list(tokenizer.encode(marker, add_special_tokens=False))
    return int(ids[0]) if len(ids) == 1 else None


def _marker_processor(prompt_length: int, token: int, *, force: bool) -> Callable[[Any, Any], Any]:
    """Logits processor: the first generated token is `token` (force), or never `token` (ban)."""
    import mlx.core as mx

    def process(tokens: Any, logprobs: Any) -> Any:
        is_marker = mx.arange(logprobs.shape[-1]) == token
        if force:
            if tokens.size > prompt_length:
                return logprobs
            return mx.where(is_marker, logprobs, -mx.inf)
        return mx.where(is_marker, -mx.inf, logprobs)

    return process


@dataclass
class Prepared:
    tokens: list[int]
    max_tokens: int
    mlx_kwargs: dict[str, Any]
    tools: list[dict[str, Any]] | None
    opens_reasoning: bool  # the prompt ends inside a <think> block


@dataclass
class Completion:
    """A whole generation, split: what non-streaming responses are built from."""

    text: str = ""
    reasoning: str = ""
    calls: list[toolcalls.Call] = field(default_factory=list)


def model_family(tokenizer: Any) -> toolcalls.Family:
    """The tool-call format of the model behind `tokenizer` (see toolcalls.family_for)."""

    def added_tokens() -> list[str]:
        try:
            return list(tokenizer.get_added_vocab())
        except (AttributeError, TypeError):
            return []

    return toolcalls.family_for(getattr(tokenizer, "chat_template", None), added_tokens)


class FamilyChatTemplate(ChatTemplate):  # type: ignore[misc]
    """Omni's template rendering (thinking switch, prefill), with past tool calls and results
    prepared the way this model family's template expects them."""

    def __init__(self, tokenizer: Any, family: toolcalls.Family) -> None:
        super().__init__("", tokenizer)
        self.family = family

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> str:
        template = getattr(self.tokenizer, "chat_template", None)
        conversation = toolcalls.history_messages(messages, self.family, template)
        self.enable_thinking_parse = kwargs.pop("enable_thinking_parse", None)
        skip_thinking_prefill = kwargs.pop("skip_thinking_prefill", False)
        # A final assistant message is a prefill the model continues.
        ending = (
            {"continue_final_message": True}
            if messages and messages[-1].get("role") == "assistant"
            else {"add_generation_prompt": True}
        )
        prompt: str = self.tokenizer.apply_chat_template(
            conversation=conversation, tools=tools, tokenize=False, **ending, **kwargs
        )
        self.has_tools = bool(tools)
        return str(self._process_thinking_prompt(prompt, skip_thinking_prefill))


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
        self.family = model_family(loaded.tokenizer)
        self.chat_template = FamilyChatTemplate(loaded.tokenizer, self.family)
        self.prepared: Prepared | None = None
        self.finish_reason: str | None = None
        self.stop_sequence: str | None = None  # the request's stop string that ended it
        self.completion_tokens = 0
        self.prompt_tokens = 0  # processed by the model, after prefix-cache reuse
        self.cached_tokens = 0

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
        choice: ToolChoice = kwargs.pop("tool_choice", None) or ToolChoice()
        tools = self.offered_tools(tools, choice)
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
        opens_reasoning = prompt.rstrip().endswith(toolcalls.THINK_START)
        marker = self._marker_rule(choice, len(tokens), opens_reasoning)
        if marker is not None:
            mlx_kwargs["logits_processors"] = [*mlx_kwargs.get("logits_processors", []), marker]
        if isinstance(sampler, dict):
            mlx_kwargs["sampling"] = sampler  # the scheduler builds a per-request sampler
        self.prepared = Prepared(
            tokens=tokens,
            max_tokens=budget,
            mlx_kwargs=mlx_kwargs,
            tools=tools or None,
            opens_reasoning=opens_reasoning,
        )
        return self.prepared

    def offered_tools(
        self, tools: list[dict[str, Any]] | None, choice: ToolChoice
    ) -> list[dict[str, Any]] | None:
        if not tools or choice.mode == "none":
            return None
        if choice.name is None:
            return tools
        named = [t for t in tools if _tool_name(t) == choice.name]
        if not named:
            raise ValueError(f"tool_choice names {choice.name!r}, which is not among the tools")
        return named

    def _marker_rule(
        self, choice: ToolChoice, prompt_length: int, opens_reasoning: bool
    ) -> Callable[[Any, Any], Any] | None:
        """ "none" bans the family's call marker; "required" forces it as the first token (not
        when the prompt opened a <think> block). Only where the marker is a single token."""
        if choice.mode == "auto" or (choice.mode == "required" and opens_reasoning):
            return None
        token = _one_token(self.tokenizer, self.family.start)
        if token is None:
            return None
        return _marker_processor(prompt_length, token, force=choice.mode == "required")

    def pieces(self, **params: Any) -> Iterator[toolcalls.Piece]:
        """Text, reasoning and tool calls as the scheduler produces tokens."""
        prepared = self.prepare(**params)
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
        parser = toolcalls.OutputParser(
            self.family if prepared.tools else None,
            prepared.tools,
            reasoning=prepared.opens_reasoning,
        )
        for event in job.events():
            self.finish_reason = event.finish_reason
            self.stop_sequence = event.stop_sequence
            self.completion_tokens = event.generation_tokens
            self.prompt_tokens = event.prompt_tokens
            self.cached_tokens = event.cached_tokens
            yield from parser.feed(event.text)
        yield from parser.finish()

    def complete(self, **params: Any) -> Completion:
        done = Completion()
        for piece in self.pieces(**params):
            if piece.call is not None:
                done.calls.append(piece.call)
            elif piece.kind == "reasoning":
                done.reasoning += piece.text
            else:
                done.text += piece.text
        return done


def call_id(api: str) -> str:
    return (
        f"toolu_{uuid.uuid4().hex[:24]}" if api == "anthropic" else f"call_{uuid.uuid4().hex[:24]}"
    )


def _arguments_json(call: toolcalls.Call) -> str:
    return json.dumps(call.arguments, ensure_ascii=False)


class LocalOpenAIAdapter(OpenAIAdapter):  # type: ignore[misc]
    """OpenAI chat completions from the generator's pieces: `reasoning_content`, `tool_calls`
    (streamed as `delta.tool_calls` with index and id), `finish_reason: tool_calls`."""

    def _prepare_generation_params(self, request: Any) -> dict[str, Any]:
        params: dict[str, Any] = super()._prepare_generation_params(request)
        params["template_kwargs"] = {
            k: v for k, v in params["template_kwargs"].items() if k in EXTRA_BODY_ALLOWED
        }
        params["top_logprobs"] = None  # logprobs would need MLX work outside the MLX thread
        # Omni drops these; the scheduler applies them per request (see scheduler.Job).
        params["stop"] = request.stop
        params["seed"] = request.seed
        params["tool_choice"] = ToolChoice.from_openai(request.tool_choice)
        return params

    def _finish_reason(self, gen: ScheduledChatGenerator, calls: int) -> str:
        if calls:
            return "tool_calls"
        return "length" if gen.finish_reason == "length" else "stop"

    def _usage(self, gen: ScheduledChatGenerator) -> dict[str, Any]:
        prompt = gen.prompt_tokens + gen.cached_tokens
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": gen.completion_tokens,
            "total_tokens": prompt + gen.completion_tokens,
        }
        if gen.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": gen.cached_tokens}
        return usage

    def complete(self, request: Any) -> dict[str, Any]:
        gen: ScheduledChatGenerator = self._generate_wrapper
        done = gen.complete(**self._prepare_generation_params(request))
        message: dict[str, Any] = {"role": "assistant", "content": done.text or None}
        if done.reasoning:
            message["reasoning_content"] = done.reasoning
        if done.calls:
            message["tool_calls"] = [
                {
                    "id": call_id("openai"),
                    "type": "function",
                    "function": {"name": c.name, "arguments": _arguments_json(c)},
                }
                for c in done.calls
            ]
        elif message["content"] is None:
            message["content"] = ""
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self._finish_reason(gen, len(done.calls)),
                }
            ],
            "usage": self._usage(gen),
        }

    def stream(self, request: Any) -> Iterator[dict[str, Any]]:
        """Chunks as dicts. The first is yielded once the prompt is checked (before generating)."""
        gen: ScheduledChatGenerator = self._generate_wrapper
        params = self._prepare_generation_params(request)
        gen.prepare(**params)
        chat_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": chat_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": request.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        yield chunk({"role": "assistant", "content": ""})
        calls = 0
        for piece in gen.pieces(**params):
            if piece.call is not None:
                function = {"name": piece.call.name, "arguments": _arguments_json(piece.call)}
                tool = {"index": calls, "id": call_id("openai"), "type": "function"}
                yield chunk({"tool_calls": [{**tool, "function": function}]})
                calls += 1
            elif piece.kind == "reasoning":
                yield chunk({"reasoning_content": piece.text})
            else:
                yield chunk({"content": piece.text})
        yield chunk({}, self._finish_reason(gen, calls))
        options = request.stream_options
        if options is not None and options.include_usage:
            yield {**chunk({}), "choices": [], "usage": self._usage(gen)}


# --- Anthropic ----------------------------------------------------------------------------------


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
        params["tool_choice"] = ToolChoice.from_anthropic(request.tool_choice)
        if isinstance(request.thinking, ThinkingConfigEnabled):
            params["template_kwargs"] = {"enable_thinking": True}
        elif isinstance(request.thinking, ThinkingConfigDisabled):
            params["template_kwargs"] = {"enable_thinking": False}
        return params

    def count_tokens(self, request: MessagesRequest) -> int:
        params = self._prepare_generation_params(request)
        gen: ScheduledChatGenerator = self._generate_wrapper
        tools = gen.offered_tools(params["tools"], params["tool_choice"])
        return gen.count_prompt_tokens(params["messages"], tools, params["template_kwargs"])

    def _stop_reason(self, gen: ScheduledChatGenerator, calls: int) -> str:
        if calls:
            return "tool_use"
        if gen.stop_sequence is not None:
            return "stop_sequence"
        return "max_tokens" if gen.finish_reason == "length" else "end_turn"

    def _stop_sequence(self, gen: ScheduledChatGenerator, calls: int) -> str | None:
        return gen.stop_sequence if not calls else None

    def complete(self, request: MessagesRequest) -> dict[str, Any]:
        gen: ScheduledChatGenerator = self._generate_wrapper
        done = gen.complete(**self._prepare_generation_params(request))
        blocks: list[dict[str, Any]] = []
        if done.reasoning:
            blocks.append({"type": "thinking", "thinking": done.reasoning, "signature": ""})
        if done.text or not (blocks or done.calls):
            blocks.append({"type": "text", "text": done.text})
        blocks += [
            {"type": "tool_use", "id": call_id("anthropic"), "name": c.name, "input": c.arguments}
            for c in done.calls
        ]
        usage: dict[str, Any] = {
            "input_tokens": gen.prompt_tokens + gen.cached_tokens,
            "output_tokens": gen.completion_tokens,
        }
        if gen.cached_tokens:
            usage["cache_read_input_tokens"] = gen.cached_tokens
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": blocks,
            "stop_reason": self._stop_reason(gen, len(done.calls)),
            "stop_sequence": self._stop_sequence(gen, len(done.calls)),
            "usage": usage,
        }

    def stream_events(self, request: MessagesRequest) -> Iterator[dict[str, Any]]:
        """Anthropic stream events as dicts; tool calls as tool_use blocks with input_json_delta."""
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
        index = -1  # index of the last block started
        open_kind: str | None = None
        calls = 0

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

        def start(block: dict[str, Any]) -> Iterator[dict[str, Any]]:
            nonlocal index, open_kind
            yield from close_open()
            index += 1
            open_kind = block["type"]
            yield {"type": "content_block_start", "index": index, "content_block": block}

        def delta(body: dict[str, Any]) -> dict[str, Any]:
            return {"type": "content_block_delta", "index": index, "delta": body}

        for piece in gen.pieces(**params):
            if piece.call is not None:
                calls += 1
                yield from start(
                    {
                        "type": "tool_use",
                        "id": call_id("anthropic"),
                        "name": piece.call.name,
                        "input": {},
                    }
                )
                yield delta(
                    {"type": "input_json_delta", "partial_json": _arguments_json(piece.call)}
                )
                yield from close_open()
            elif piece.kind == "reasoning":
                if open_kind != "thinking":
                    yield from start({"type": "thinking", "thinking": ""})
                yield delta({"type": "thinking_delta", "thinking": piece.text})
            else:
                if open_kind != "text":
                    yield from start({"type": "text", "text": ""})
                yield delta({"type": "text_delta", "text": piece.text})
        if index < 0:
            yield from start({"type": "text", "text": ""})  # a message has at least one block
        yield from close_open()
        yield {
            "type": "message_delta",
            "delta": {
                "stop_reason": self._stop_reason(gen, calls),
                "stop_sequence": self._stop_sequence(gen, calls),
            },
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": gen.completion_tokens,
                # As in the non-streamed answer: the part of input_tokens read from the cache.
                **({"cache_read_input_tokens": gen.cached_tokens} if gen.cached_tokens else {}),
            },
        }
        yield {"type": "message_stop"}
