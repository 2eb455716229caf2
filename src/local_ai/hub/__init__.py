"""HuggingFace Hub: resolve manifest entries to commits and files, fetch and verify them.

Everything goes through huggingface_hub (imported inside functions: the CLI must start fast).
"""
