"""Benchmarks: `uv run python -m benchmarks <name>` (see __main__.py for the list)."""
