"""Shared by tests and benchmarks/: tiny models, GGUF export, a fake HuggingFace Hub."""
