"""The tool-call formats, parsed from text alone: each family's native output, fed whole and one
character at a time, gives the same text, reasoning and schema-typed calls."""

from __future__ import annotations

from typing import Any

import pytest

from local_ai.server.engine import toolcalls as tc
from tests.server_helpers import TYPED_TOOLS

TOOLS = TYPED_TOOLS
PARIS = ("get_weather", {"city": "Paris", "days": 3})
METRIC = ("get_weather", {"metric": True, "opts": {"a": 1}})

# (family, native output): every one says "Checking." then calls PARIS and METRIC.
OUTPUTS = [
    (
        "qwen3_coder",
        "Checking.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n"
        "<function=get_weather>\n<parameter=metric>\ntrue\n</parameter>\n<parameter=opts>\n"
        '{"a": 1}\n</parameter>\n</function>\n</tool_call>',
    ),
    (
        "hermes",
        'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
        '"days": "3"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"metric": "true", "opts": {"a": 1}}}\n</tool_call>',
    ),
    (
        "glm47",  # GLM-4.5/4.6 write newlines between the parts
        "Checking.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>\n<tool_call>get_weather\n"
        "<arg_key>metric</arg_key>\n<arg_value>true</arg_value>\n<arg_key>opts</arg_key>\n"
        '<arg_value>{"a": 1}</arg_value>\n</tool_call>',
    ),
    (
        "glm47",  # GLM-4.7 does not
        "Checking.<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value>"
        "<arg_key>days</arg_key><arg_value>3</arg_value></tool_call><tool_call>get_weather"
        "<arg_key>metric</arg_key><arg_value>true</arg_value><arg_key>opts</arg_key>"
        '<arg_value>{"a": 1}</arg_value></tool_call>',
    ),
    (
        "minimax_m2",
        'Checking.\n<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">'
        'Paris</parameter>\n<parameter name="days">3</parameter>\n</invoke>\n<invoke name='
        '"get_weather">\n<parameter name="metric">true</parameter>\n<parameter name="opts">'
        '{"a": 1}</parameter>\n</invoke>\n</minimax:tool_call>',
    ),
    (
        "kimi_k2",
        "Checking.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        '<|tool_call_argument_begin|>{"city": "Paris", "days": 3}<|tool_call_end|>'
        "<|tool_call_begin|>functions.get_weather:1<|tool_call_argument_begin|>"
        '{"metric": true, "opts": {"a": 1}}<|tool_call_end|><|tool_calls_section_end|>',
    ),
    (
        "mistral",
        'Checking.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}'
        '[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"metric": true, "opts": {"a": 1}}',
    ),
    (
        "mistral",  # the older JSON-list form
        'Checking.[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", '
        '"days": 3}}, {"name": "get_weather", "arguments": {"metric": true, "opts": {"a": 1}}}]',
    ),
    (
        "deepseek_v31",
        "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
        '{"city": "Paris", "days": 3}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_weather'
        '<｜tool▁sep｜>{"metric": true, "opts": {"a": 1}}<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
    ),
    (
        "deepseek_v31",  # V3-0324 / R1 wrote the type and a fenced JSON
        "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
        '```json\n{"city": "Paris", "days": 3}\n```<｜tool▁call▁end｜><｜tool▁call▁begin｜>function'
        '<｜tool▁sep｜>get_weather\n```json\n{"metric": true, "opts": {"a": 1}}\n```'
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    ),
    (
        "deepseek_v32",
        'Checking.\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_weather">\n'
        '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
        '<｜DSML｜invoke name="get_weather">\n<｜DSML｜parameter name="metric" string="false">'
        'true</｜DSML｜parameter>\n<｜DSML｜parameter name="opts" string="false">{"a": 1}'
        "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>",
    ),
]
FAMILY = {f.name: f for f in tc.FAMILIES}


def parse(family: tc.Family | None, text: str, step: int, **kw: Any) -> list[tuple[str, Any]]:
    parser = tc.OutputParser(family, TOOLS, **kw)
    pieces = []
    for i in range(0, len(text), step):
        pieces += parser.feed(text[i : i + step])
    pieces += parser.finish()
    merged: list[tuple[str, Any]] = []
    for p in pieces:
        if p.kind == "call":
            assert p.call is not None
            merged.append(("call", (p.call.name, p.call.arguments)))
        elif merged and merged[-1][0] == p.kind:
            merged[-1] = (p.kind, merged[-1][1] + p.text)
        else:
            merged.append((p.kind, p.text))
    return merged


@pytest.mark.parametrize(
    ("family", "text"), OUTPUTS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(OUTPUTS)]
)
def test_each_format_parses_whole_and_streamed(family: str, text: str) -> None:
    expected = [("text", "Checking."), ("call", PARIS), ("call", METRIC)]
    assert parse(FAMILY[family], text, len(text)) == expected
    assert parse(FAMILY[family], text, 1) == expected  # markers split across every chunk


# The other formats, one call each: recognised and typed the same way.
OTHER_FORMATS = [
    ("gemma4", '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>'),
    (
        "function_gemma",
        "<start_function_call>call:get_weather{city:<escape>Paris<escape>,days:3}"
        "<end_function_call>",
    ),
    (
        "longcat",
        "<longcat_tool_call>get_weather\n<longcat_arg_key>city</longcat_arg_key>\n"
        "<longcat_arg_value>Paris</longcat_arg_value>\n<longcat_arg_key>days</longcat_arg_key>\n"
        "<longcat_arg_value>3</longcat_arg_value>\n</longcat_tool_call>",
    ),
    ("pythonic", '<|tool_call_start|>[get_weather(city="Paris", days="3")]<|tool_call_end|>'),
    ("llama3", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}'),
]


@pytest.mark.parametrize(("family", "text"), OTHER_FORMATS, ids=[f for f, _ in OTHER_FORMATS])
def test_mlx_lm_other_formats(family: str, text: str) -> None:
    expected = [("text", "Checking."), ("call", PARIS)]
    assert parse(FAMILY[family], "Checking. " + text, 1) == expected


def test_reasoning_is_separate_from_text_and_calls() -> None:
    text = (
        "Weigh it.\n</think>\n\nOn it.<tool_call>get_weather<arg_key>days</arg_key>"
        "<arg_value>3</arg_value></tool_call>"
    )
    expected = [
        ("reasoning", "Weigh it."),
        ("text", "On it."),
        ("call", ("get_weather", {"days": 3})),
    ]
    assert parse(FAMILY["glm47"], text, 1, reasoning=True) == expected
    inline = "<think>Weigh it.</think>On it."
    assert parse(FAMILY["glm47"], inline, 2) == [("reasoning", "Weigh it."), ("text", "On it.")]


def test_without_tools_markup_stays_text_and_bad_calls_are_text() -> None:
    text = 'a <tool_call>{"name": "x"}</tool_call> b'
    assert parse(None, text, 3) == [("text", text)]
    broken = "<tool_call>{not json}</tool_call>"
    assert parse(FAMILY["hermes"], broken, 1) == [("text", broken)]


def test_a_text_that_only_looks_like_a_marker_start_is_released() -> None:
    assert parse(FAMILY["kimi_k2"], "x < y and <|tool", 1) == [("text", "x < y and <|tool")]


@pytest.mark.parametrize(
    ("template", "vocab", "family"),
    [
        ("{{ '<minimax:tool_call>' }}", [], "minimax_m2"),
        ("<|tool_call>call:{{ name }}<tool_call|>", [], "gemma4"),
        ("<start_function_call>", [], "function_gemma"),
        ("<longcat_tool_call>", [], "longcat"),
        ("<|tool_list_start|>[...]<|tool_list_end|>", [], "pythonic"),
        ("{{- '<|python_tag|>' }}", [], "llama3"),
        ("<｜DSML｜function_calls>", [], "deepseek_v32"),
        ("'<｜tool▁calls▁begin｜>'", [], "deepseek_v31"),
        ("<tool_call>{{ name }}<arg_key>", [], "glm47"),
        ("{{- '<tool_call>\\n<function=' }}", [], "qwen3_coder"),
        ("<|tool_calls_section_begin|>", [], "kimi_k2"),
        ("[TOOL_CALLS]", [], "mistral"),
        ("<tool_call>{{ tool_call.name }}", [], "hermes"),
        ("{{ messages }}", ["[TOOL_CALLS]"], "mistral"),  # GGUF without a tool template
        ({"default": "x", "tool_use": "[TOOL_CALLS]"}, [], "mistral"),
        (None, [], "hermes"),
    ],
)
def test_family_from_template_then_vocabulary(template: Any, vocab: list[str], family: str) -> None:
    assert tc.family_for(template, lambda: vocab).name == family


def test_history_arguments_and_ids_as_each_template_wants() -> None:
    messages: Any = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"days": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"},
    ]
    glm = tc.history_messages(messages, FAMILY["glm47"])
    assert glm[0]["content"] == "hi" and glm[1]["content"] == ""
    assert glm[1]["tool_calls"][0]["function"]["arguments"] == {"days": 3}
    deepseek = tc.history_messages(messages, FAMILY["deepseek_v31"])
    assert deepseek[1]["tool_calls"][0]["function"]["arguments"] == '{"days": 3}'
    piped = "{{ tool['function']['arguments'] | tojson }}"  # a conversion's DeepSeek template
    deepseek = tc.history_messages(messages, FAMILY["deepseek_v31"], piped)
    assert deepseek[1]["tool_calls"][0]["function"]["arguments"] == {"days": 3}
    kimi = tc.history_messages(messages, FAMILY["kimi_k2"])
    assert kimi[1]["tool_calls"][0]["id"] == "functions.get_weather:0"
    assert kimi[2]["tool_call_id"] == "functions.get_weather:0"
    mistral = tc.history_messages(messages, FAMILY["mistral"])
    call_id = mistral[1]["tool_calls"][0]["id"]
    assert len(call_id) == 9 and call_id.isalnum() and mistral[2]["tool_call_id"] == call_id
