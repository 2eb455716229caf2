"""Request bodies as clients send them, made acceptable to the engine; error bodies per API.

Pure functions on JSON-like dicts (no heavy imports): the gateway and the engine share them.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

Api = Literal["openai", "anthropic"]

# Request fields that make the engine read files or load other models: never accepted.
FORBIDDEN_FIELDS = frozenset(
    {
        "adapter_path",
        "adapters",
        "lora_path",
        "draft_model",
        "draft-model",
        "draft_model_id",
        "model_path",
        "tokenizer_path",
        "chat_template",
        "trust_remote_code",
    }
)
# Omni feeds `extra_body` to the sampler and the chat template; only these keys pass.
EXTRA_BODY_ALLOWED = frozenset(
    {"enable_thinking", "top_k", "min_p", "min_tokens_to_keep", "xtc_probability", "xtc_threshold"}
)
BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"
# Anthropic content blocks the engine understands; others (thinking history, documents, server
# tool results) are dropped instead of failing the request.
ANTHROPIC_BLOCKS = frozenset({"text", "image", "tool_use", "tool_result"})


def api_of(path: str) -> Api:
    return "anthropic" if path.startswith("/anthropic/") else "openai"


def forbidden_fields(body: dict[str, Any]) -> list[str]:
    found = sorted(k for k in body if k in FORBIDDEN_FIELDS)
    extra = body.get("extra_body")
    if isinstance(extra, dict):
        found += sorted(f"extra_body.{k}" for k in extra if k in FORBIDDEN_FIELDS)
    return found


TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")


def request_problem(body: dict[str, Any]) -> tuple[str, str] | None:
    """(field, message) for a request the engine would mishandle: a token limit that is not a
    positive integer (a negative budget never ends a generation), or an empty `messages`."""
    for name in TOKEN_LIMIT_FIELDS:
        value = body.get(name)
        if value is None:  # null means "unset"
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return name, f"{name} must be a positive integer"
    if body.get("messages") == []:
        return "messages", "messages must not be empty"
    return None


# --- error bodies -------------------------------------------------------------------------------

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "server_error",
}


def error_body(
    api: Api, status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    if api == "anthropic":
        kind = _ANTHROPIC_TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def context_error(api: Api, prompt_tokens: int, context: int) -> dict[str, Any]:
    if api == "anthropic":
        # Claude Code looks for "prompt is too long" to offer compaction.
        message = f"prompt is too long: {prompt_tokens} tokens > {context - 1} maximum"
    else:
        message = (
            f"This model's maximum context length is {context} tokens. However, your messages "
            f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages."
        )
    return error_body(api, 400, message, code="context_length_exceeded", param="messages")


# --- OpenAI -------------------------------------------------------------------------------------


def _text_of_parts(content: Any) -> Any:
    """Content parts reduced to the text parts Omni's schema accepts (images are not served)."""
    if not isinstance(content, list):
        return content
    return [
        {"type": "text", "text": str(part.get("text", ""))}
        for part in content
        if isinstance(part, dict) and part.get("type") in ("text", "input_text")
    ]


def normalize_openai(body: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(body)
    messages = out.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            if not isinstance(msg, dict):
                continue
            if msg.get("role") == "developer":  # newer OpenAI clients; same meaning as system
                msg["role"] = "system"
            if "content" in msg:
                msg["content"] = _text_of_parts(msg["content"])
    extra = out.get("extra_body")
    if isinstance(extra, dict):
        out["extra_body"] = {k: v for k, v in extra.items() if k in EXTRA_BODY_ALLOWED}
    elif extra is not None:
        out.pop("extra_body")
    return out


# --- Anthropic ----------------------------------------------------------------------------------


def strip_billing_header(text: str) -> str:
    """Drop Claude Code's per-request billing line so the prompt prefix stays cacheable."""
    if BILLING_HEADER_PREFIX not in text:
        return text
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not line.lstrip().startswith(BILLING_HEADER_PREFIX)]
    return "".join(kept).lstrip("\n")


def _system_blocks(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"type": "text", "text": system}]
    if isinstance(system, list):
        return [b for b in system if isinstance(b, dict) and b.get("type") == "text"]
    return []


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(b.get("text", ""))
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _clean_blocks(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    blocks = []
    for block in content:
        if not isinstance(block, dict) or block.get("type") not in ANTHROPIC_BLOCKS:
            continue
        if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
            block = {
                **block,
                "content": [
                    b
                    for b in block["content"]
                    if isinstance(b, dict) and b.get("type") in ("text", "image")
                ],
            }
        blocks.append(block)
    return blocks


def normalize_anthropic(body: dict[str, Any]) -> dict[str, Any]:
    """Accept what Claude Code sends: `system` messages, adaptive thinking, thinking history,
    server tools, and the per-request billing header."""
    out = copy.deepcopy(body)
    system = _system_blocks(out.get("system"))
    messages = []
    for msg in out.get("messages") or []:
        if isinstance(msg, dict) and msg.get("role") == "system":
            text = _message_text(msg.get("content"))
            if text:
                system.append({"type": "text", "text": text})
            continue
        if isinstance(msg, dict) and "content" in msg:
            msg = {**msg, "content": _clean_blocks(msg["content"])}
            if msg["content"] == [] and msg.get("role") == "assistant":
                msg["content"] = ""
        messages.append(msg)
    if "messages" in out:
        out["messages"] = messages
    cleaned = []
    for block in system:
        text = strip_billing_header(str(block.get("text", "")))
        if text.strip():
            cleaned.append({"type": "text", "text": text})
    if cleaned:
        out["system"] = cleaned
    else:
        out.pop("system", None)
    thinking = out.get("thinking")
    if isinstance(thinking, dict):
        kind = thinking.get("type")
        if kind == "adaptive":
            out.pop("thinking")  # let the model's template decide
        elif kind == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or budget < 1024:
                out["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    tools = out.get("tools")
    if isinstance(tools, list):
        # Server tools (web search, code execution …) have no input_schema; the model cannot run
        # them, so they are left out of the prompt.
        out["tools"] = [t for t in tools if isinstance(t, dict) and "input_schema" in t] or None
        if out["tools"] is None:
            out.pop("tools")
            out.pop("tool_choice", None)
    return out
