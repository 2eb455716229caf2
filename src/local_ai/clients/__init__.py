"""Zed, Claude Code, Goose and Codex config writers.

``plan`` is the entry point for the reconciler (observe / plan / apply); ``base`` holds the pure
merge, removal and drift logic; ``jsonc`` and ``yamlkeys`` edit files without reformatting them.
"""
