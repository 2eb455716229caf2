"""Generated artifacts of the manifest models: the JSON schema and the manifest reference page.

`python -m local_ai.manifest.schema --write` regenerates both; `--check` (run by the tests)
fails when the committed files differ from what the models produce.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from local_ai.manifest.models import manifest_json_schema
from local_ai.util.atomic import atomic_write_text

SCHEMA_RELPATH = Path("schemas/local-ai.schema.json")
REFERENCE_RELPATH = Path("docs/manifest.md")

_SECTIONS: list[tuple[str, str, str]] = [
    # (TOML table as written, schema definition name, heading note)
    ("(top level)", "Manifest", ""),
    ("[server]", "ServerSettings", ""),
    ("[server.engine]", "EngineSettings", ""),
    ("[models.<alias>]", "ModelSpec", ""),
    ("[benchmark]", "BenchmarkSettings", ""),
    ("[clients.zed]", "ZedClient", ""),
    ("[clients.claude_code]", "ClaudeCodeClient", ""),
    ("[clients.goose]", "GooseClient", ""),
    ("[clients.codex]", "CodexClient", ""),
    ("[cluster]", "ClusterSettings", ""),
    ("[cluster.hosts.<name>]", "ClusterHost", ""),
]


def schema_text() -> str:
    return json.dumps(manifest_json_schema(), indent=2, sort_keys=False) + "\n"


def _type_of(prop: dict[str, Any]) -> str:
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "$ref" in prop:
        return "table"
    if "anyOf" in prop:
        kinds = [_type_of(p) for p in prop["anyOf"] if p.get("type") != "null"]
        return " \\| ".join(kinds)
    kind = prop.get("type")
    if kind == "array":
        return f"array of {_type_of(prop.get('items', {}))}"
    if kind == "object":
        return "table"
    names = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}
    return names.get(str(kind), str(kind))


def _constraints(prop: dict[str, Any]) -> str:
    parts = []
    for source in [prop, *prop.get("anyOf", [])]:
        for key, word in (("minimum", "≥"), ("maximum", "≤"), ("exclusiveMinimum", ">")):
            if key in source:
                parts.append(f"{word} {source[key]}")
        if "minLength" in source:
            parts.append(f"at least {source['minLength']} characters")
    return ", ".join(parts)


def reference_text() -> str:
    schema = manifest_json_schema()
    defs = schema.get("$defs", {})
    lines = [
        "# Manifest reference (`local-ai.toml`)",
        "",
        "<!-- Generated from the pydantic models by `uv run python -m local_ai.manifest.schema "
        "--write`; do not edit by hand. -->",
        "",
        "The manifest declares what local-ai should make true on this machine. Unknown keys are "
        "errors, so typos never pass silently. Editors with Taplo / Even Better TOML validate and "
        "complete the file through the `#:schema` line at its top, which points at "
        f"`{SCHEMA_RELPATH}` in this repository; `local-ai init` writes the schema next to the "
        f"manifest it creates and points at it as `./{SCHEMA_RELPATH.name}`.",
        "",
        "A model's source is exactly one of `repo` (a HuggingFace repo, optionally with `file` "
        "naming a GGUF file inside it, and `revision`) or `path` (a local directory or .gguf "
        "file). Aliases (the table names under `[models]`) are the model ids clients send.",
        "",
    ]
    for table, name, _ in _SECTIONS:
        node = schema if name == "Manifest" else defs[name]
        lines += [f"## `{table}`" if table != "(top level)" else "## Top level", ""]
        if node.get("description"):
            lines += [node["description"], ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for key, prop in node.get("properties", {}).items():
            if "$ref" in prop or ("anyOf" in prop and any("$ref" in p for p in prop["anyOf"])):
                continue  # sub-tables get their own section
            if "default" in prop:
                default = prop["default"]
                shown = "unset" if default is None else f"`{json.dumps(default)}`"
            elif key in node.get("required", []):
                shown = "required"
            else:
                shown = "empty"
            desc = prop.get("description", "")
            if (extra := _constraints(prop)) and extra:
                desc = f"{desc} ({extra})" if desc else extra
            lines.append(f"| `{key}` | {_type_of(prop)} | {shown} | {desc} |")
        lines.append("")
    return "\n".join(lines)


def _targets(root: Path) -> dict[Path, str]:
    return {root / SCHEMA_RELPATH: schema_text(), root / REFERENCE_RELPATH: reference_text()}


def stale_files(root: Path) -> list[Path]:
    """Generated files under `root` whose content differs from what the models produce."""
    stale = []
    for path, text in _targets(root).items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(path)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path.cwd())
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true")
    group.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.write:
        for path, text in _targets(args.root).items():
            atomic_write_text(path, text)
            print(f"wrote {path}")
        return 0
    stale = stale_files(args.root)
    for path in stale:
        print(f"{path} is out of date; run: uv run python -m local_ai.manifest.schema --write")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
