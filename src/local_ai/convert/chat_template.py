"""Chat templates from untrusted files, rendered only in Jinja's immutable sandbox.

A GGUF's ``tokenizer.chat_template`` is code written by whoever made the file. local-ai renders it
only here: ``ImmutableSandboxedEnvironment`` blocks attribute access to internals and mutation of
passed-in objects, and ranges are capped. The globals mirror what transformers gives templates
(``raise_exception``, ``strftime_now``, ``tojson`` with its arguments), so a template renders the
same text here as in transformers and mlx-lm.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

#: A short conversation every usable chat template must render.
SAMPLE_MESSAGES: tuple[dict[str, str], ...] = (
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi. How can I help?"},
    {"role": "user", "content": "Reverse a list in Python."},
)


class TemplateError(Exception):
    """The template failed to compile or render (message says where)."""


@cache
def _environment() -> ImmutableSandboxedEnvironment:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols], autoescape=False
    )

    def raise_exception(message: str) -> None:
        raise TemplateError(f"the template raised: {message}")

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    def strftime_now(fmt: str) -> str:
        from datetime import datetime

        return datetime.now().strftime(fmt)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    special_tokens: Mapping[str, str | None] | None = None,
    **extra: Any,
) -> str:
    """Render ``template`` for ``messages`` in the sandbox, as transformers'
    ``apply_chat_template(tokenize=False)`` does."""
    from jinja2 import TemplateError as JinjaError
    from jinja2.exceptions import SecurityError

    try:
        compiled = _environment().from_string(template)
        return compiled.render(
            messages=list(messages),
            tools=list(tools) if tools is not None else None,
            add_generation_prompt=add_generation_prompt,
            **(dict(special_tokens) if special_tokens else {}),
            **extra,
        )
    except SecurityError as exc:
        raise TemplateError(f"the template tried an unsafe operation: {exc}") from None
    except JinjaError as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise TemplateError(f"{type(exc).__name__}{where}: {exc}") from None
    except TemplateError:
        raise
    except Exception as exc:  # templates can fail in arbitrary Python ways (TypeError …)
        raise TemplateError(f"{type(exc).__name__}: {exc}") from None


def check_chat_template(template: str, special_tokens: Mapping[str, str | None]) -> str | None:
    """None when ``template`` renders a sample conversation, else why not (for a warning)."""
    try:
        render_chat_template(
            template, SAMPLE_MESSAGES, add_generation_prompt=True, special_tokens=special_tokens
        )
    except TemplateError as exc:
        return str(exc)
    return None
