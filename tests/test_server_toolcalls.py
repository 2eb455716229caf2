"""Tool calls in each model family's native format, end to end: scripted tiny models answer in
their family's markup under templates carrying its real markers, served by one real daemon, and
the official `openai` and `anthropic` SDKs see typed calls, text, reasoning and second turns.

Each model has two scripted answers: with thinking off, a sentence and one call; when the
template opens reasoning (`enable_thinking`, on by default as for real thinking models),
reasoning, a sentence and two calls."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from local_ai.server.engine import toolcalls
from tests.server_helpers import (
    TYPED_TOOLS,
    Daemon,
    build_scripted_model,
    free_port,
    write_manifest,
)

Args = dict[str, Any]
Calls = list[tuple[str, Args]]

TOOLS = TYPED_TOOLS
ANTHROPIC_TOOLS: Any = [
    {
        "name": t["function"]["name"],
        "description": t["function"]["description"],
        "input_schema": t["function"]["parameters"],
    }
    for t in TOOLS
]
ONE: Calls = [("get_weather", {"city": "Paris", "days": 3})]
TWO: Calls = [
    ("get_weather", {"city": "Oslo", "days": 2, "metric": True}),
    ("get_time", {"zone": "UTC", "opts": {"h24": True}}),
]
TEXT_ONE = "Checking the weather."
TEXT_TWO = "Two calls now."
REASONING = "The user wants weather and time; call both tools."


def _scalar(value: Any) -> str:
    """How XML-style formats write a value: bare text, JSON for everything not a string."""
    return value if isinstance(value, str) else json.dumps(value)


def _qwen3_coder(calls: Calls) -> str:
    return "\n".join(
        f"<tool_call>\n<function={name}>\n"
        + "".join(f"<parameter={k}>\n{_scalar(v)}\n</parameter>\n" for k, v in args.items())
        + "</function>\n</tool_call>"
        for name, args in calls
    )


def _hermes(calls: Calls) -> str:
    return "\n".join(
        f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in calls
    )


def _glm(newline: str) -> Callable[[Calls], str]:
    def write(calls: Calls) -> str:
        return "".join(
            f"<tool_call>{name}{newline}"
            + "".join(
                f"<arg_key>{k}</arg_key>{newline}<arg_value>{_scalar(v)}</arg_value>{newline}"
                for k, v in args.items()
            )
            + "</tool_call>"
            for name, args in calls
        )

    return write


def _minimax(calls: Calls) -> str:
    invokes = "".join(
        f'<invoke name="{name}">\n'
        + "".join(f'<parameter name="{k}">{_scalar(v)}</parameter>\n' for k, v in args.items())
        + "</invoke>\n"
        for name, args in calls
    )
    return f"<minimax:tool_call>\n{invokes}</minimax:tool_call>"


def _kimi(calls: Calls) -> str:
    body = "".join(
        f"<|tool_call_begin|>functions.{name}:{i}<|tool_call_argument_begin|>"
        f"{json.dumps(args)}<|tool_call_end|>"
        for i, (name, args) in enumerate(calls)
    )
    return f"<|tool_calls_section_begin|>{body}<|tool_calls_section_end|>"


def _mistral(calls: Calls) -> str:
    return "".join(f"[TOOL_CALLS]{name}[ARGS]{json.dumps(args)}" for name, args in calls)


def _mistral_old(calls: Calls) -> str:
    return "[TOOL_CALLS] " + json.dumps([{"name": n, "arguments": a} for n, a in calls])


def _deepseek_v31(calls: Calls) -> str:
    body = "".join(
        f"<｜tool▁call▁begin｜>{name}<｜tool▁sep｜>{json.dumps(args)}<｜tool▁call▁end｜>"
        for name, args in calls
    )
    return f"<｜tool▁calls▁begin｜>{body}<｜tool▁calls▁end｜>"


def _dsml(calls: Calls) -> str:
    invokes = "".join(
        f'<｜DSML｜invoke name="{name}">\n'
        + "".join(
            f'<｜DSML｜parameter name="{k}" string="{str(isinstance(v, str)).lower()}">'
            f"{_scalar(v)}</｜DSML｜parameter>\n"
            for k, v in args.items()
        )
        + "</｜DSML｜invoke>\n"
        for name, args in calls
    )
    return f"\n\n<｜DSML｜function_calls>\n{invokes}</｜DSML｜function_calls>"


# How each family's template renders a past call (`tc`) and a tool result (`m`), as its
# published template does: arguments iterated as a dict, or concatenated as JSON text (DeepSeek).
_ITEMS = "{%- for k, v in tc.function.arguments.items() %}"
_VALUE = "{{- v if v is string else v | tojson }}"
RENDER_CALL = {
    "qwen3_coder": "{{- '<tool_call>\\n<function=' + tc.function.name + '>\\n' }}"
    + "{%- for k, v in tc.function.arguments|items %}{{- '<parameter=' + k + '>\\n' }}"
    + _VALUE
    + "{{- '\\n</parameter>\\n' }}{%- endfor %}{{- '</function>\\n</tool_call>' }}",
    "hermes": '{{- \'<tool_call>\\n{"name": "\' + tc.function.name + \'", "arguments": \' }}'
    + "{{- tc.function.arguments | tojson }}{{- '}\\n</tool_call>' }}",
    "glm47": "{{- '<tool_call>' + tc.function.name }}"
    + _ITEMS
    + "{{- '<arg_key>' + k + '</arg_key><arg_value>' }}"
    + _VALUE
    + "{{- '</arg_value>' }}{%- endfor %}{{- '</tool_call>' }}",
    "minimax_m2": "{{- '<minimax:tool_call>\\n<invoke name=\"' + tc.function.name + '\">\\n' }}"
    + _ITEMS
    + "{{- '<parameter name=\"' + k + '\">' }}"
    + _VALUE
    + "{{- '</parameter>\\n' }}{%- endfor %}{{- '</invoke>\\n</minimax:tool_call>' }}",
    "kimi_k2": "{{- '<|tool_calls_section_begin|><|tool_call_begin|>' + tc.id }}"
    + "{{- '<|tool_call_argument_begin|>' }}{{- tc.function.arguments | tojson }}"
    + "{{- '<|tool_call_end|><|tool_calls_section_end|>' }}",
    "mistral": "{%- if tc.id is not string or tc.id|length != 9 %}"
    + "{{- raise_exception('Tool call IDs should be alphanumeric strings with length 9!') }}"
    + "{%- endif %}{{- '[TOOL_CALLS]' + tc.function.name + '[ARGS]' }}"
    + "{{- tc.function.arguments | tojson }}",
    "deepseek_v31": "{{- '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tc.function.name }}"
    + "{{- '<｜tool▁sep｜>' + tc.function.arguments + '<｜tool▁call▁end｜><｜tool▁calls▁end｜>' }}",
    "deepseek_v32": "{{- '<｜DSML｜function_calls>\\n<｜DSML｜invoke name=\"' + tc.function.name }}"
    + "{{- '\">\\n' }}"
    + _ITEMS
    + "{{- '<｜DSML｜parameter name=\"' + k + '\" string=\"' }}"
    + "{{- 'true' if v is string else 'false' }}{{- '\">' }}"
    + _VALUE
    + "{{- '</｜DSML｜parameter>\\n' }}{%- endfor %}"
    + "{{- '</｜DSML｜invoke>\\n</｜DSML｜function_calls>' }}",
}
RENDER_RESULT = {
    "kimi_k2": "{{- '## Return of ' + m.tool_call_id + '\\n' + m.content }}",
    "mistral": '{{- \'[TOOL_RESULTS]{"content": \' + m.content | tojson + \', "call_id": "\' }}'
    + "{{- m.tool_call_id + '\"}[/TOOL_RESULTS]' }}",
    "deepseek_v31": "{{- '<｜tool▁output▁begin｜>' + m.content + '<｜tool▁output▁end｜>' }}",
}


def family_template(family: str) -> str:
    """A ChatML template whose tool section is `family`'s; opens <think> on enable_thinking."""
    result = RENDER_RESULT.get(family, "{{- '<tool_response>\\n' + m.content }}")
    return (
        "{%- if tools %}{{- '<|im_start|>system\\n# Tools\\n' }}"
        "{%- for t in tools %}{{- t | tojson + '\\n' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
        "{%- endif %}"
        "{%- for m in messages %}"
        "{%- if m.role == 'tool' %}{{- '<|im_start|>user\\n' }}" + result + "{{- '<|im_end|>\\n' }}"
        "{%- elif m.role == 'assistant' %}{{- '<|im_start|>assistant\\n' + m.content }}"
        "{%- for tc in m.tool_calls or [] %}" + RENDER_CALL[family] + "{%- endfor %}"
        "{{- '<|im_end|>\\n' }}"
        "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
        "{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
        "{%- if enable_thinking %}{{- '<think>' }}{%- endif %}{%- endif %}"
    )


# alias -> (family whose template it carries, how the model writes calls)
MODELS: dict[str, tuple[str, Callable[[Calls], str]]] = {
    "qwen3-coder": ("qwen3_coder", _qwen3_coder),
    "hermes": ("hermes", _hermes),
    "glm45": ("glm47", _glm("\n")),
    "glm47": ("glm47", _glm("")),
    "minimax-m2": ("minimax_m2", _minimax),
    "kimi-k2": ("kimi_k2", _kimi),
    "devstral": ("mistral", _mistral),
    "mistral-v3": ("mistral", _mistral_old),
    "deepseek-v31": ("deepseek_v31", _deepseek_v31),
    "deepseek-v32": ("deepseek_v32", _dsml),
}
ALIASES = list(MODELS)
# What a second turn's prompt must contain: the past call in the family's own markup.
PAST_CALL = {
    "qwen3-coder": "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>",
    "hermes": '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}',
    "glm45": "<arg_key>days</arg_key><arg_value>3</arg_value>",
    "glm47": "<arg_key>days</arg_key><arg_value>3</arg_value>",
    "minimax-m2": '<parameter name="days">3</parameter>',
    "kimi-k2": '<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": '
    '"Paris", "days": 3}<|tool_call_end|>',
    "devstral": '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}',
    "mistral-v3": '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}',
    "deepseek-v31": 'get_weather<｜tool▁sep｜>{"city": "Paris", "days": 3}<｜tool▁call▁end｜>',
    "deepseek-v32": '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>',
}


# ... and the result after it (a pattern), pointing at the call as the template names it.
MISTRAL_RESULT = r'\[TOOL_RESULTS\]\{"content": "18 degrees", "call_id": "[0-9a-zA-Z]{9}"\}'
PAST_RESULT = {
    "kimi-k2": re.escape("## Return of functions.get_weather:0\n18 degrees"),
    "devstral": MISTRAL_RESULT,
    "mistral-v3": MISTRAL_RESULT,
    "deepseek-v31": re.escape("<｜tool▁output▁begin｜>18 degrees<｜tool▁output▁end｜>"),
}


def build_family_model(out: Path, alias: str) -> Path:
    family, write = MODELS[alias]
    answers: dict[str, str | list[str]] = {
        "\n": TEXT_ONE + "\n\n" + write(ONE),
        "<think>": f"{REASONING}\n</think>\n\n{TEXT_TWO}\n" + write(TWO),
    }
    return build_scripted_model(out, answers, chat_template=family_template(family))


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toolcalls")
    return {alias: build_family_model(root / alias, alias) for alias in ALIASES}


@pytest.fixture(scope="module")
def daemon(models: dict[str, Path]) -> Iterator[Daemon]:
    root = next(iter(models.values())).parent
    port = free_port()
    manifest = write_manifest(
        root, port=port, models=models, engine_extra=f"max_loaded_models = {len(models)}"
    )
    with Daemon(home=root / "home", manifest=manifest, port=port).running() as d:
        yield d


def _calls(message: Any) -> Calls:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


NO_MARKUP = ("<", "[TOOL", "｜", "{")


@pytest.mark.parametrize("alias", ALIASES)
def test_openai_sdk(daemon: Daemon, alias: str) -> None:
    import openai

    sdk = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused", max_retries=0)
    question: Any = [{"role": "user", "content": "Weather in Paris?"}]
    plain: Any = {"model": alias, "tools": TOOLS, "max_tokens": 300, "temperature": 0}
    common: Any = {**plain, "extra_body": {"enable_thinking": False}}

    result = sdk.chat.completions.create(messages=question, **common)
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == TEXT_ONE
    assert _calls(choice.message) == ONE  # typed by the schema: days is 3, not "3"

    chunks = list(sdk.chat.completions.create(messages=question, stream=True, **common))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    texts = [d.content for d in deltas if d.content]
    assert "".join(texts) == TEXT_ONE and len(texts) > 1
    assert not any(mark in t for t in texts for mark in NO_MARKUP)
    streamed = [tc for d in deltas for tc in d.tool_calls or []]
    assert [(tc.index, tc.function.name) for tc in streamed] == [(0, "get_weather")]  # type: ignore[union-attr]
    assert streamed[0].id and json.loads(streamed[0].function.arguments) == ONE[0][1]  # type: ignore[union-attr, arg-type]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"

    # Reasoning opened by the template: it goes to reasoning_content, two calls follow.
    thinking: Any = {**plain, "extra_body": {"enable_thinking": True}}
    result = sdk.chat.completions.create(messages=question, **thinking)
    message: Any = result.choices[0].message
    assert message.reasoning_content == REASONING
    assert message.content == TEXT_TWO and _calls(message) == TWO
    chunks = list(sdk.chat.completions.create(messages=question, stream=True, **thinking))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert reasoning == REASONING
    assert "".join(d.content or "" for d in deltas) == TEXT_TWO
    streamed = [tc for d in deltas for tc in d.tool_calls or []]
    assert [tc.index for tc in streamed] == [0, 1] and len({tc.id for tc in streamed}) == 2
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in streamed] == TWO  # type: ignore[union-attr, arg-type]

    # Second turn: the call and its result go back through the family's template.
    call = choice.message.tool_calls[0]  # type: ignore[index]
    follow_up = sdk.chat.completions.create(
        messages=[
            *question,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"},
        ],
        **common,
    )
    assert follow_up.choices[0].finish_reason == "tool_calls"
    assert follow_up.usage is not None and result.usage is not None
    assert follow_up.usage.prompt_tokens > result.usage.prompt_tokens


@pytest.mark.parametrize("alias", ALIASES)
def test_anthropic_sdk(daemon: Daemon, alias: str) -> None:
    import anthropic

    sdk = anthropic.Anthropic(base_url=f"{daemon.url}/anthropic", api_key="unused", max_retries=0)
    question: Any = [{"role": "user", "content": "Weather in Paris?"}]
    plain: Any = {"model": alias, "tools": ANTHROPIC_TOOLS, "max_tokens": 300}
    common: Any = {**plain, "thinking": {"type": "disabled"}}

    message = sdk.messages.create(messages=question, **common)
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["text", "tool_use"]
    text, use = message.content
    assert text.text == TEXT_ONE  # type: ignore[union-attr]
    assert (use.name, use.input) == ONE[0]  # type: ignore[union-attr]

    with sdk.messages.stream(messages=question, **common) as stream:
        texts = list(stream.text_stream)
        streamed = stream.get_final_message()
    assert "".join(texts) == TEXT_ONE and len(texts) > 1
    assert not any(mark in t for t in texts for mark in NO_MARKUP)
    assert [b.type for b in streamed.content] == ["text", "tool_use"]
    assert (streamed.content[1].name, streamed.content[1].input) == ONE[0]  # type: ignore[union-attr]

    thinking: Any = {**plain, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    whole = sdk.messages.create(messages=question, **thinking)
    assert [b.type for b in whole.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert whole.content[0].thinking == REASONING  # type: ignore[union-attr]
    partial: dict[int, str] = {}
    with sdk.messages.stream(messages=question, **thinking) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partial[event.index] = partial.get(event.index, "") + event.delta.partial_json
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert final.content[0].thinking == REASONING  # type: ignore[union-attr]
    assert final.content[1].text == TEXT_TWO  # type: ignore[union-attr]
    assert [(b.name, b.input) for b in final.content[2:]] == TWO  # type: ignore[union-attr]
    assert [json.loads(partial[i]) for i in (2, 3)] == [args for _, args in TWO]

    again = sdk.messages.create(
        messages=[
            *question,
            {"role": "assistant", "content": [b.model_dump() for b in message.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}],  # type: ignore[union-attr]
            },
        ],
        **common,
    )
    assert again.stop_reason == "tool_use"
    assert again.usage.input_tokens > message.usage.input_tokens


@pytest.mark.parametrize("alias", ALIASES)
def test_second_turn_renders_in_the_family_markup(models: dict[str, Path], alias: str) -> None:
    """The engine's own prompt building, on the served model's files: the past call appears in
    the family's markup with its arguments as the template wants them, then the result."""
    from mlx_lm.tokenizer_utils import load

    from local_ai.convert.chat_template import use_for_transformers
    from local_ai.server.engine.generator import FamilyChatTemplate, model_family

    use_for_transformers()
    tokenizer = load(models[alias])
    family = model_family(tokenizer)
    assert family.name == MODELS[alias][0]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0123456789abcdef",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps(ONE[0][1])},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0123456789abcdef", "content": "18 degrees"},
    ]
    prompt = FamilyChatTemplate(tokenizer, family).apply_chat_template(
        messages, TOOLS, enable_thinking=False
    )
    result = re.search(PAST_RESULT.get(alias, "<tool_response>\n18 degrees"), prompt)
    assert PAST_CALL[alias] in prompt and result is not None, prompt
    assert prompt.index(PAST_CALL[alias]) < result.start()
    assert prompt.endswith("<|im_start|>assistant\n")


def test_families_cover_the_table() -> None:
    parse_tested_only = {"gemma4", "function_gemma", "longcat", "pythonic", "llama3"}
    served = {family for family, _ in MODELS.values()}
    assert served | parse_tested_only == set(toolcalls.FAMILY_NAMES)
