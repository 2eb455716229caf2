"""Chat templates from untrusted files, rendered only in Jinja's immutable sandbox.

A GGUF's ``tokenizer.chat_template`` is code written by whoever made the file. local-ai renders it
only here: ``ImmutableSandboxedEnvironment`` blocks attribute access to internals and mutation of
passed-in objects, and ranges are capped. On top of that every render has a budget: loop
iterations and calls are counted against a limit and a deadline, and ``*``, ``**``, ``+``, ``~``,
filter and call results may not grow a value beyond a size limit, so a template cannot hang or
exhaust memory either. The globals mirror what transformers gives templates
(``raise_exception``, ``strftime_now``, ``tojson`` with its arguments), so a template renders the
same text here as in transformers and mlx-lm.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jinja2 import Template
    from jinja2.sandbox import ImmutableSandboxedEnvironment

#: Per render: loop iterations plus calls, wall-clock seconds, and the largest string, list or
#: number (in characters, items or digits) any expression may produce.
MAX_STEPS = 2_000_000
MAX_SECONDS = 10.0
MAX_SIZE = 64 << 20

#: A short conversation every usable chat template must render.
SAMPLE_MESSAGES: tuple[dict[str, str], ...] = (
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi. How can I help?"},
    {"role": "user", "content": "Reverse a list in Python."},
)


class TemplateError(Exception):
    """The template failed to compile or render (message says where)."""


class _Budget(threading.local):
    steps = 0
    deadline = 0.0
    active = False


_budget = _Budget()


def _step() -> None:
    if not _budget.active:
        return
    _budget.steps += 1
    if _budget.steps > MAX_STEPS:
        raise TemplateError(f"the template exceeded {MAX_STEPS} loop iterations and calls")
    if time.monotonic() > _budget.deadline:
        raise TemplateError(f"the template ran for more than {MAX_SECONDS:.0f} s")


def _size(value: Any) -> int:
    if isinstance(value, str | bytes | list | tuple | dict | set):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 3  # about the number of decimal digits
    return 0


def _checked(value: Any) -> Any:
    _step()
    if _size(value) > MAX_SIZE:
        raise TemplateError(f"the template built a value larger than {MAX_SIZE} items")
    return value


def _bounded(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _step()
        yield item


def _binop_too_big(operator: str, left: Any, right: Any) -> bool:
    if operator == "**":
        if not isinstance(left, int | float) or not isinstance(right, int | float):
            return False
        base = abs(left)
        return base > 1 and right > 0 and math.log2(base) * right > MAX_SIZE
    if operator == "*":
        sizes = (_size(left), _size(right))
        counts = [v for v in (left, right) if isinstance(v, int) and not isinstance(v, bool)]
        if len(counts) == 2:
            return sizes[0] + sizes[1] > MAX_SIZE
        if counts:
            return max(sizes) * counts[0] > MAX_SIZE  # a sequence repeated
        return False
    return _size(left) + _size(right) > MAX_SIZE  # "+"


@cache
def _environment() -> ImmutableSandboxedEnvironment:
    from jinja2 import Template, nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.visitor import NodeTransformer

    class BudgetedTemplate(Template):
        def render(self, *args: Any, **kwargs: Any) -> str:
            if _budget.active:  # nested (an include): the outer render's budget applies
                return super().render(*args, **kwargs)
            _budget.active, _budget.steps = True, 0
            _budget.deadline = time.monotonic() + MAX_SECONDS
            try:
                return _checked(super().render(*args, **kwargs))  # type: ignore[no-any-return]
            finally:
                _budget.active = False

    def wrap(expr: Any, name: str) -> Any:
        return nodes.Filter(expr, name, [], [], None, None, lineno=expr.lineno)

    class Guard(NodeTransformer):
        """Routes every loop through `_bounded` and every growing expression through
        `_checked`."""

        def visit_For(self, node: Any) -> Any:
            self.generic_visit(node)
            node.iter = wrap(node.iter, "_lai_bounded")
            return node

        def _checked(self, node: Any) -> Any:
            self.generic_visit(node)
            return wrap(node, "_lai_checked")

        visit_Concat = visit_Filter = visit_Call = _checked

    class Generation(Extension):
        """transformers' `{% generation %}` marks assistant text; rendering just keeps it."""

        tags = {"generation"}  # noqa: RUF012 (jinja reads it from the class)

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    class BudgetedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+"})
        template_class = BudgetedTemplate

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if _binop_too_big(operator, left, right):
                raise TemplateError(f"the template's {operator!r} would build too large a value")
            return _checked(super().call_binop(context, operator, left, right))

        def _parse(self, source: str, name: str | None, filename: str | None) -> Any:
            return Guard().visit(super()._parse(source, name, filename))

    env = BudgetedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[loopcontrols, Generation],
        autoescape=False,
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
    env.filters["_lai_bounded"] = _bounded
    env.filters["_lai_checked"] = _checked
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def compile_chat_template(template: str) -> Template:
    """`template` compiled in the budgeted sandbox (jinja's own errors propagate)."""
    return _environment().from_string(template)


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
        compiled = compile_chat_template(template)
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


def use_for_transformers() -> None:
    """Make transformers (and through it mlx-lm and Omni in the engine) compile chat templates in
    this budgeted sandbox: a model's template then cannot hang or exhaust a serving thread."""
    from transformers.utils import chat_template_utils

    # render_jinja_template looks this name up in its module on every call.
    chat_template_utils._compile_jinja_template = cache(compile_chat_template)
