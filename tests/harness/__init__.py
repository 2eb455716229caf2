"""Test harness shared by every test module and by benchmarks/: tiny models, GGUF export, fake hub."""
