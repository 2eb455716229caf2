"""Benchmarks users run against their own server (`local-ai bench`, and apply's benchmark)."""
