"""The manifest: pydantic models, loading with positioned errors, tomlkit edits, JSON schema."""
