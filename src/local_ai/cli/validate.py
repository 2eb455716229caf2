"""`local-ai validate`: check a manifest without touching anything."""

from __future__ import annotations

from local_ai import settings
from local_ai.cli.options import ConfigOption, JsonOption
from local_ai.cli.output import console, print_json


def validate_command(config: ConfigOption = None, json: JsonOption = False) -> None:
    """Check local-ai.toml: syntax, keys, values and references between them."""
    from local_ai.manifest.load import load_manifest

    loaded = load_manifest(settings.manifest_path(config))
    manifest = loaded.manifest
    if json:
        print_json(
            {
                "path": str(loaded.path),
                "valid": True,
                "fingerprint": manifest.fingerprint(),
                "models": {alias: spec.source_label for alias, spec in manifest.models.items()},
            }
        )
        return
    count = len(manifest.models)
    console().print(
        f"[green]✓[/] {loaded.path} is valid: {count} model{'s' if count != 1 else ''}"
        + (f" ({', '.join(manifest.models)})" if count else "")
    )
