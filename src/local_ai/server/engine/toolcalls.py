"""Tool calls in each model family's native format: which format a model writes (from its chat
template, then its vocabulary), parsing its output into text, reasoning and typed calls as the
tokens arrive, and preparing earlier calls and results for its template.

One table, `FAMILIES`, holds every format: the markers that open and close a call section, the
parser of what lies between, and how the family's template wants past calls. mlx-lm's parsers are
used where it ships a right one (imported lazily); DeepSeek and Mistral's forms are parsed here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger("local_ai.engine")

THINK_START = "<think>"
THINK_END = "</think>"

Tools = Sequence[Mapping[str, Any]] | None
RawCall = dict[str, Any]  # {"name": str, "arguments": dict | str}


# --- parsers: the text between a family's start and end markers -> calls ------------------------


def _mlx_lm(module: str, *, with_tools: bool = False) -> Callable[[str, Tools], list[RawCall]]:
    """mlx-lm's parser in `mlx_lm.tool_parsers.<module>`; typing by schema is done afterwards for
    every family alike, so most parsers get no tools (they would raise on a bad number)."""

    def parse(body: str, tools: Tools) -> list[RawCall]:
        import importlib

        parser = importlib.import_module(f"mlx_lm.tool_parsers.{module}").parse_tool_call
        result = parser(body, list(tools) if with_tools and tools else None)
        return list(result) if isinstance(result, list) else [result]

    return parse


def _json_value(text: str) -> Any:
    """The JSON value at the start of `text` (trailing text after it is ignored)."""
    value, _ = json.JSONDecoder().raw_decode(text.strip())
    return value


def _parse_mistral(body: str, tools: Tools) -> list[RawCall]:
    """`name[ARGS]{...}` (optionally `name[CALL_ID]id[ARGS]{...}`), or the older JSON list
    `[{"name": ..., "arguments": {...}}, ...]` that follows one `[TOOL_CALLS]`."""
    text = body.strip()
    if text.startswith("["):
        items = _json_value(text)
        items = items if isinstance(items, list) else [items]
        return [{"name": i["name"], "arguments": i.get("arguments", {})} for i in items]
    name, sep, args = text.partition("[ARGS]")
    if not sep:
        raise ValueError("no [ARGS] in a Mistral tool call")
    name = name.partition("[CALL_ID]")[0]
    return [{"name": name, "arguments": _json_value(args) if args.strip() else {}}]


def _parse_llama3(body: str, tools: Tools) -> list[RawCall]:
    """Llama 3.x: `{"name": ..., "parameters": {...}}` after `<|python_tag|>`, `;`-separated."""
    calls = []
    for part in body.split(";"):
        if part.strip():
            item = _json_value(part)
            calls.append(
                {
                    "name": item["name"],
                    "arguments": item.get("parameters", item.get("arguments", {})),
                }
            )
    return calls


_DS_CALL = re.compile(r"<｜tool▁call▁begin｜>(.*?)<｜tool▁call▁end｜>", re.DOTALL)
_DS_V3_ARGS = re.compile(r"^(.*?)\n```(?:json)?\n(.*?)\n?```", re.DOTALL)


def _parse_deepseek(body: str, tools: Tools) -> list[RawCall]:
    """V3.1: `<｜tool▁call▁begin｜>name<｜tool▁sep｜>{json}<｜tool▁call▁end｜>`; V3/R1 wrote
    `function<｜tool▁sep｜>name` and the arguments in a ```json fence."""
    calls = []
    for item in _DS_CALL.findall(body):
        head, sep, rest = item.partition("<｜tool▁sep｜>")
        if not sep:
            raise ValueError("no <｜tool▁sep｜> in a DeepSeek tool call")
        fenced = _DS_V3_ARGS.match(rest) if head.strip() == "function" else None
        if fenced:
            calls.append({"name": fenced.group(1), "arguments": _json_value(fenced.group(2))})
        else:
            calls.append({"name": head, "arguments": _json_value(rest) if rest.strip() else {}})
    if not calls:
        raise ValueError("no DeepSeek tool call found")
    return calls


_DSML_INVOKE = re.compile(r'<｜DSML｜invoke name="(.*?)">(.*?)</｜DSML｜invoke>', re.DOTALL)
_DSML_PARAM = re.compile(
    r'<｜DSML｜parameter name="(.*?)"(?: string="(true|false)")?>(.*?)</｜DSML｜parameter>',
    re.DOTALL,
)


def _parse_dsml(body: str, tools: Tools) -> list[RawCall]:
    """DeepSeek V3.2: `<｜DSML｜invoke name="f">` holding `<｜DSML｜parameter name="p"
    string="true|false">` (string="false" values are JSON)."""
    calls = []
    for name, inner in _DSML_INVOKE.findall(body):
        params = _DSML_PARAM.findall(inner)
        if not params and inner.strip().startswith("{"):
            calls.append({"name": name, "arguments": _json_value(inner)})
            continue
        arguments: dict[str, Any] = {}
        for key, is_string, value in params:
            if is_string == "false":
                try:
                    arguments[key] = json.loads(value)
                    continue
                except ValueError:
                    pass
            arguments[key] = value
        calls.append({"name": name, "arguments": arguments})
    if not calls:
        raise ValueError("no DSML invoke found")
    return calls


# --- history ids: some templates render the call id and expect their own shape -------------------


def _kimi_id(original: str, name: str, index: int) -> str:
    return original if original.startswith("functions.") else f"functions.{name}:{index}"


def _mistral_id(original: str, name: str, index: int) -> str:
    # Mistral's templates refuse ids that are not 9 alphanumeric characters.
    if len(original) == 9 and original.isalnum():
        return original
    return hashlib.sha256(original.encode()).hexdigest()[:9]


# --- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str
    detect: tuple[str, ...]  # any of these in the chat template (or vocabulary) selects it
    start: str  # opens a tool-call section in the output
    end: str  # closes it; "" when a section runs to the next start or the end of the output
    parse: Callable[[str, Tools], list[RawCall]]
    arguments: Literal["dict", "json"] = "dict"  # past calls' arguments as the template wants
    history_id: Callable[[str, str, int], str] | None = None


# Checked in order, mlx-lm's order with DeepSeek's added: more specific markers first (GLM and
# Qwen3-Coder also write <tool_call>). The target families are tested end to end; Gemma 4,
# FunctionGemma, LongCat and LFM2 (pythonic) are mlx-lm's parsers as they are, Llama 3's
# `<|python_tag|>` form what Omni parsed before.
FAMILIES: tuple[Family, ...] = (
    Family(
        "minimax_m2",
        ("<minimax:tool_call>",),
        "<minimax:tool_call>",
        "</minimax:tool_call>",
        _mlx_lm("minimax_m2"),
    ),
    Family("gemma4", ("<tool_call|>",), "<|tool_call>", "<tool_call|>", _mlx_lm("gemma4")),
    Family(
        "function_gemma",
        ("<start_function_call>",),
        "<start_function_call>",
        "<end_function_call>",
        _mlx_lm("function_gemma"),
    ),
    Family(
        "longcat",
        ("<longcat_tool_call>",),
        "<longcat_tool_call>",
        "</longcat_tool_call>",
        _mlx_lm("longcat", with_tools=True),
    ),
    Family(
        "deepseek_v32",
        ("｜DSML｜",),
        "<｜DSML｜function_calls>",
        "</｜DSML｜function_calls>",
        _parse_dsml,
    ),
    Family(
        "deepseek_v31",
        ("<｜tool▁calls▁begin｜>",),
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁calls▁end｜>",
        _parse_deepseek,
        arguments="json",  # its template concatenates the arguments as a string
    ),
    Family(
        "glm47", ("<arg_key>",), "<tool_call>", "</tool_call>", _mlx_lm("glm47", with_tools=True)
    ),
    Family(  # LFM2
        "pythonic",
        ("<|tool_list_start|>",),
        "<|tool_call_start|>",
        "<|tool_call_end|>",
        _mlx_lm("pythonic"),
    ),
    Family(
        "qwen3_coder",
        ("<tool_call>\\n<function=", "<tool_call>\n<function="),
        "<tool_call>",
        "</tool_call>",
        _mlx_lm("qwen3_coder"),
    ),
    Family(
        "kimi_k2",
        ("<|tool_calls_section_begin|>",),
        "<|tool_calls_section_begin|>",
        "<|tool_calls_section_end|>",
        _mlx_lm("kimi_k2"),
        history_id=_kimi_id,
    ),
    Family(
        "mistral", ("[TOOL_CALLS]",), "[TOOL_CALLS]", "", _parse_mistral, history_id=_mistral_id
    ),
    Family("llama3", ("<|python_tag|>",), "<|python_tag|>", "", _parse_llama3),
    Family("hermes", ("<tool_call>",), "<tool_call>", "</tool_call>", _mlx_lm("json_tools")),
)
FAMILY_NAMES = tuple(f.name for f in FAMILIES)
# Models whose template and vocabulary name no format get Hermes (Qwen2.5, many fine-tunes).
DEFAULT_FAMILY = FAMILIES[-1]


def _template_text(template: Any) -> str:
    if isinstance(template, str):
        return template
    if isinstance(template, Mapping):
        return "\n".join(str(t) for t in template.values())
    if isinstance(template, list):  # [{"name": ..., "template": ...}]
        return "\n".join(str(t.get("template", "")) for t in template if isinstance(t, Mapping))
    return ""


def family_for(chat_template: Any, vocabulary: Callable[[], Iterable[str]] = tuple) -> Family:
    """The format a model writes: from its chat template as mlx-lm infers it (a fine-tune or a
    GGUF conversion keeps the template while `model_type` may differ), else from its added
    tokens (`vocabulary` is called only then)."""
    text = _template_text(chat_template)
    for family in FAMILIES:
        if any(key in text for key in family.detect):
            return family
    tokens = set(vocabulary())
    for family in FAMILIES:
        if family.start in tokens:
            return family
    return DEFAULT_FAMILY


# --- arguments typed by the tool's JSON schema --------------------------------------------------


def _schema_types(schema: Any) -> set[str]:
    if not isinstance(schema, Mapping):
        return set()
    kind = schema.get("type")
    types = {kind} if isinstance(kind, str) else {t for t in kind or () if isinstance(t, str)}
    for key in ("anyOf", "oneOf"):
        for choice in schema.get(key) or ():
            types |= _schema_types(choice)
    for value in schema.get("enum") or ():
        types.add(_json_type(value))
    return types


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string"


def _typed(value: Any, types: set[str]) -> Any:
    """A string value converted to the schema's non-string type when it reads as one."""
    if not isinstance(value, str) or not types or "string" in types:
        return value
    text = value.strip()
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        parsed = json.loads(text)
    except ValueError:
        return value
    kind = _json_type(parsed)
    if kind in types or (kind == "integer" and "number" in types):
        return parsed
    if kind == "number" and "integer" in types and float(parsed).is_integer():
        return int(parsed)
    return value


def _properties(name: str, tools: Tools) -> Mapping[str, Any]:
    for tool in tools or ():
        function = tool.get("function", tool)
        if isinstance(function, Mapping) and function.get("name") == name:
            params = function.get("parameters") or function.get("input_schema") or {}
            props = params.get("properties") if isinstance(params, Mapping) else None
            return props if isinstance(props, Mapping) else {}
    return {}


@dataclass(frozen=True)
class Call:
    name: str
    arguments: dict[str, Any]


def _call(raw: RawCall, tools: Tools) -> Call:
    name = str(raw.get("name", "")).strip()
    arguments = raw.get("arguments")
    if isinstance(arguments, str):
        arguments = json.loads(arguments) if arguments.strip() else {}
    if not isinstance(arguments, dict):
        raise ValueError(f"arguments of {name} are not an object")
    props = _properties(name, tools)
    typed = {k: _typed(v, _schema_types(props.get(k))) for k, v in arguments.items()}
    return Call(name=name, arguments=typed)


# --- the output, parsed as it streams -----------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    kind: Literal["text", "reasoning", "call"]
    text: str = ""
    call: Call | None = None


def _partial_suffix(text: str, markers: Iterable[str]) -> int:
    """Length of the longest end of `text` that could begin one of `markers`."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:n]):
                best = n
                break
    return best


@dataclass
class OutputParser:
    """Splits generated text into text, reasoning and tool calls as it arrives.

    Text that may be the beginning of a marker is held back until the next token decides, so no
    markup ever reaches the client as text; a call is emitted once its section is complete.
    `family` is None when the request has no tools: tool markup then stays text.
    """

    family: Family | None
    tools: Tools = None
    reasoning: bool = False  # the prompt opened a <think> block
    _buffer: str = ""
    _mode: Literal["text", "reasoning", "tool"] = field(default="text", init=False)
    _body: list[str] = field(default_factory=list, init=False)  # a call's text, searched already
    _strip_leading: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.reasoning:
            self._mode = "reasoning"
            self._strip_leading = True

    def feed(self, text: str) -> list[Piece]:
        self._buffer += text
        out: list[Piece] = []
        while self._step(out, final=False):
            pass
        return out

    def finish(self) -> list[Piece]:
        out: list[Piece] = []
        while self._step(out, final=True):
            pass
        if self._mode == "tool":
            self._close_section("".join(self._body) + self._buffer, out, closed=False)
        else:
            self._emit(self._mode, self._buffer, out)
        self._buffer = ""
        return out

    def _emit(
        self, kind: Literal["text", "reasoning", "tool"], text: str, out: list[Piece]
    ) -> None:
        if self._strip_leading:
            text = text.lstrip()
            self._strip_leading = not text
        if text and kind != "tool":
            out.append(Piece(kind, text))

    def _step(self, out: list[Piece], *, final: bool) -> bool:
        """Consume what the buffer decides; True when a marker was passed."""
        buf = self._buffer
        if self._mode == "tool":
            assert self.family is not None
            end = self.family.end or self.family.start  # Mistral: a call runs to the next one
            pos = buf.find(end)
            if pos < 0:
                # Keep only what could begin the end marker: a long call is not rescanned.
                settled = len(buf) - len(end) + 1
                if settled > 0:
                    self._body.append(buf[:settled])
                    self._buffer = buf[settled:]
                return False
            self._close_section("".join(self._body) + buf[:pos], out, closed=True)
            self._buffer = buf[pos + len(end) :]
            if not self.family.end:
                self._mode = "tool"
            return True
        if self._mode == "reasoning":
            markers = [THINK_END]
        else:
            markers = [THINK_START] + ([self.family.start] if self.family else [])
        hits = [(buf.find(m), m) for m in markers if m in buf]
        if hits:
            pos, marker = min(hits)
            self._emit(self._mode, buf[:pos].rstrip(), out)
            self._buffer = buf[pos + len(marker) :]
            self._mode = (
                "reasoning" if marker == THINK_START else "text" if marker == THINK_END else "tool"
            )
            self._strip_leading = True
            return True
        if final:
            return False
        # Hold back a possible partial marker and trailing whitespace (it may precede a call).
        hold = _partial_suffix(buf, markers)
        safe = buf[: len(buf) - hold]
        kept = safe.rstrip()
        self._emit(self._mode, kept, out)
        self._buffer = buf[len(kept) :]
        return False

    def _close_section(self, body: str, out: list[Piece], *, closed: bool) -> None:
        assert self.family is not None
        self._mode = "text"
        self._strip_leading = True
        self._body = []
        try:
            calls = [_call(raw, self.tools) for raw in self.family.parse(body, self.tools)]
        except Exception as exc:  # a model's malformed call is its text, not a server error
            log.warning("unparsable %s tool call (%s): kept as text", self.family.name, exc)
            end = self.family.end if closed else ""
            out.append(Piece("text", self.family.start + body + end))
            return
        out.extend(Piece("call", call=call) for call in calls)


# --- the reverse direction: past calls and results for the family's template -------------------


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return "\n\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )
    return str(content)


# A template that pipes arguments through tojson wants a dict, whatever its family usually wants
# (DeepSeek V3.1's own template concatenates a string; some conversions ship `|tojson`).
_ARGUMENTS_TOJSON = re.compile(r"""arguments(?:['"]\])?\s*\|\s*tojson""")


def history_messages(
    messages: Sequence[Mapping[str, Any]], family: Family, template: Any = None
) -> list[dict[str, Any]]:
    """Messages as `family`'s template expects them: past calls' arguments as a dict or as JSON
    text, call ids in the shape the template renders, and tool results pointing at those ids."""
    as_text = family.arguments == "json" and not _ARGUMENTS_TOJSON.search(_template_text(template))
    ids: dict[str, str] = {}
    count = 0
    out: list[dict[str, Any]] = []
    for message in messages:
        msg = dict(message)
        msg["content"] = _content_text(msg.get("content"))
        calls = []
        for raw in msg.get("tool_calls") or ():
            call = dict(raw.model_dump() if hasattr(raw, "model_dump") else raw)
            function = dict(call.get("function") or {})
            args = function.get("arguments")
            if not as_text and isinstance(args, str):
                with contextlib.suppress(ValueError):
                    args = json.loads(args) if args.strip() else {}
            elif as_text and not isinstance(args, str):
                args = json.dumps(args if args is not None else {}, ensure_ascii=False)
            function["arguments"] = args
            call["function"] = function
            if family.history_id is not None:
                original = str(call.get("id") or "")
                call["id"] = family.history_id(original, str(function.get("name", "")), count)
                ids[original] = call["id"]
            count += 1
            calls.append(call)
        if calls:
            msg["tool_calls"] = calls
        if msg.get("role") == "tool" and msg.get("tool_call_id") in ids:
            msg["tool_call_id"] = ids[msg["tool_call_id"]]
        out.append(msg)
    return out
