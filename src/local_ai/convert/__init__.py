"""Model conversion to MLX: a defensive GGUF reader and GGUF -> MLX converter, the safetensors
path through mlx-lm, quantization recipes, and the worker process both run in.

Entry points for callers are in ``local_ai.convert.api``. Modules marked as worker-only import
MLX at the top and must only be imported inside the conversion process.
"""
