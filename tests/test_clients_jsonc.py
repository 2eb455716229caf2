"""The JSON-with-comments and YAML-key editors: edits splice only the member they change, so
comments, order, indentation and trailing commas survive, and insert-then-delete is the identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from local_ai.clients import jsonc, yamlkeys

DATA = Path(__file__).parent / "data" / "clients"
ZED_FIXTURES = sorted(DATA.glob("zed_*.jsonc"))


def strip_comments(text: str) -> str:
    """Reference: drop comments token by token, then trailing commas, and parse as JSON."""
    out = []
    tokens = jsonc.tokenize(text)
    for i, tok in enumerate(tokens):
        if tok.kind == "comment":
            continue
        if tok.kind == ",":
            nxt = next((t for t in tokens[i + 1 :] if t.kind != "comment"), None)
            if nxt is not None and nxt.kind in ("}", "]"):
                continue
        out.append(text[tok.start : tok.end])
    return " ".join(out)


@pytest.mark.parametrize("path", ZED_FIXTURES, ids=lambda p: p.name)
def test_fixtures_parse_like_json_after_stripping(path: Path) -> None:
    text = path.read_text()
    stripped = strip_comments(text)
    expected = json.loads(stripped) if stripped.strip() else None
    assert jsonc.loads(text) == expected


def test_strings_that_look_like_comments_are_strings() -> None:
    text = '{"a": "// not a comment", "b": "/* nor this */", "c": "x\\"y"} // real'
    assert jsonc.loads(text) == {"a": "// not a comment", "b": "/* nor this */", "c": 'x"y'}


@pytest.mark.parametrize(
    ("text", "line", "column", "problem"),
    [
        ('{\n  "a": 1,\n  "b": tru\n}', 3, 8, "unexpected character 't'"),
        ('{\n  "a": 1\n  "b": 2\n}', 3, 3, "expected ',' or '}'"),
        ('{"a": 1', 1, 8, "expected ',' or '}', found the end of the file"),
        ('{"a": 1}\n{"b": 2}', 2, 1, "unexpected text after the top-level value"),
        ('{\n  /* never closed\n  "a": 1\n}', 2, 3, "unterminated /* comment"),
        ('{"a": "line\nbreak"}', 1, 7, "unterminated string"),
        ("{'a': 1}", 1, 2, "unexpected character"),
    ],
)
def test_errors_point_at_line_and_column(text: str, line: int, column: int, problem: str) -> None:
    with pytest.raises(jsonc.JsoncError) as caught:
        jsonc.parse(text)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert problem in caught.value.problem


@pytest.mark.parametrize("path", ZED_FIXTURES, ids=lambda p: p.name)
def test_insert_then_delete_is_the_identity(path: Path) -> None:
    text = path.read_text()
    value = {"api_url": "http://127.0.0.1:8080/v1", "available_models": [{"name": "m"}]}
    slot = ("language_models", "openai_compatible", "zz-new")
    new, created = jsonc.set_value(text, slot, value)
    assert jsonc.lookup(new, slot) == (True, value)
    back = jsonc.delete(new, slot)
    for container in sorted(created, key=len, reverse=True):
        if jsonc.is_empty_object(back, container):
            back = jsonc.delete_root(back) if container == () else jsonc.delete(back, container)
    assert back == text


def test_insert_follows_trailing_comma_style_and_keeps_same_line_comments() -> None:
    text = '{\n  "a": 1, // one\n  "b": [1, 2,], /* two */\n}\n'
    new, _ = jsonc.set_value(text, ("c",), True)
    assert new == '{\n  "a": 1, // one\n  "b": [1, 2,], /* two */\n  "c": true,\n}\n'
    text = '{\n    "a": 1 // one\n}\n'
    new, _ = jsonc.set_value(text, ("c",), {"d": 2})
    assert new == '{\n    "a": 1, // one\n    "c": {\n        "d": 2\n    }\n}\n'


def test_replacing_a_value_keeps_everything_around_it() -> None:
    text = '{\n  // keep\n  "x": {"old": 1}, // after\n  "y": 2\n}'
    new, created = jsonc.set_value(text, ("x",), 3)
    assert (new, created) == ('{\n  // keep\n  "x": 3, // after\n  "y": 2\n}', [])
    assert jsonc.raw_value(text, ("x",)) == '{"old": 1}'
    assert jsonc.replace_raw(new, ("x",), '{"old": 1}') == text


def test_crlf_files_stay_crlf() -> None:
    text = '{\r\n  "a": 1\r\n}\r\n'
    new, _ = jsonc.set_value(text, ("b", "c"), 2)
    assert new == '{\r\n  "a": 1,\r\n  "b": {\r\n    "c": 2\r\n  }\r\n}\r\n'
    assert "\n" not in new.replace("\r\n", "")


def test_comment_only_and_empty_documents_get_an_object() -> None:
    text = (DATA / "zed_comments_only.jsonc").read_text()
    new, created = jsonc.set_value(text, ("a", "b"), 1)
    assert new == text + '{\n  "a": {\n    "b": 1\n  }\n}\n'
    assert created == [(), ("a",)]
    assert jsonc.set_value("", ("a",), 1) == ('{\n  "a": 1\n}\n', [()])


def test_setting_below_a_non_object_is_refused() -> None:
    with pytest.raises(jsonc.JsoncEditError, match="language_models is not an object"):
        jsonc.set_value('{"language_models": []}', ("language_models", "x"), 1)
    with pytest.raises(jsonc.JsoncEditError, match="the top level is not an object"):
        jsonc.set_value("[1, 2]", ("a",), 1)


def test_duplicate_keys_read_and_edit_the_last_one() -> None:
    text = '{"a": 1, "a": 2}'
    assert jsonc.loads(text) == {"a": 2}
    assert jsonc.set_value(text, ("a",), 3)[0] == '{"a": 1, "a": 3}'


KEYS = st.text(alphabet="abcxyz_-", min_size=1, max_size=4)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text('ab"\\/ é', max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=6,
)


# The same documents every run: a red CI is a regression, not a new input met by chance.
@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    doc=st.dictionaries(KEYS, VALUES, max_size=4),
    path=st.lists(KEYS, min_size=1, max_size=3),
    value=VALUES,
    indent=st.sampled_from([2, 4, "\t"]),
    trailing=st.booleans(),
)
def test_set_then_delete_round_trips_on_generated_documents(
    doc: dict[str, object], path: list[str], value: object, indent: int | str, trailing: bool
) -> None:
    text = json.dumps(doc, indent=indent)
    if trailing:
        text = text.replace("\n}", ",\n}").replace("{,\n}", "{\n}")
    text = "// header\n" + text + "\n"
    slot = tuple(path)
    try:
        new, created = jsonc.set_value(text, slot, value)
    except jsonc.JsoncEditError:
        return  # a non-object on the way: refused, nothing to check
    assert jsonc.lookup(new, slot) == (True, value)
    if jsonc.lookup(text, slot)[0]:
        return  # a replacement, not an insertion
    back = jsonc.delete(new, slot)
    for container in sorted(created, key=len, reverse=True):
        if jsonc.is_empty_object(back, container):
            back = jsonc.delete(back, container)
    assert back == text


# ------------------------------------------------------------------------------------ YAML


def test_yaml_keys_are_replaced_in_place_keeping_comments() -> None:
    text = (DATA / "goose_config.yaml").read_text()
    new = yamlkeys.set_key(text, "GOOSE_MODEL", "coder")
    assert new == text.replace(
        "GOOSE_MODEL: claude-sonnet-4-5  # the default", 'GOOSE_MODEL: "coder"  # the default'
    )
    assert yamlkeys.get(new, "GOOSE_MODEL") == (True, "coder")
    assert yamlkeys.raw_value(text, "GOOSE_MODEL") == "claude-sonnet-4-5"
    assert yamlkeys.set_key(new, "GOOSE_MODEL", "claude-sonnet-4-5", raw=True) == text


def test_yaml_appended_keys_delete_back_to_the_original() -> None:
    for text in ["extensions:\n  a: 1\n", "extensions:\n  a: 1", "", "# only a comment\n"]:
        new = yamlkeys.set_key(text, "GOOSE_PROVIDER", "custom_local_ai")
        assert yamlkeys.get(new, "GOOSE_PROVIDER") == (True, "custom_local_ai")
        assert yamlkeys.delete_key(new, "GOOSE_PROVIDER") == text


def test_yaml_nested_keys_and_quoting() -> None:
    text = "a:\n  GOOSE_MODEL: inner\nb: \"x # y\" # c\nc: 'it''s'\nd: ~\n"
    assert yamlkeys.get(text, "GOOSE_MODEL") == (False, None)  # nested: not top level
    assert yamlkeys.get(text, "b") == (True, "x # y")
    assert yamlkeys.get(text, "c") == (True, "it's")
    assert yamlkeys.get(text, "d") == (True, None)
    with pytest.raises(yamlkeys.YamlKeysError, match="a holds a nested block"):
        yamlkeys.set_key(text, "a", "flat")


def test_yaml_flow_and_sequence_documents() -> None:
    assert yamlkeys.set_key("{}\n", "GOOSE_MODEL", "m") == 'GOOSE_MODEL: "m"\n'
    for text in ["{a: 1}\n", "- a\n- b\n", "[1, 2]\n"]:
        with pytest.raises(yamlkeys.YamlKeysError, match="not a block mapping"):
            yamlkeys.set_key(text, "GOOSE_MODEL", "m")
