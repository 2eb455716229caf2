"""The local server: gateway (ASGI), engine worker (MLX Omni adapters), daemon control, launchd.

Modules under ``gateway/`` and ``engine/`` run only in the server processes and may import heavy
libraries at module level; everything else here is imported by the CLI and stays light.
"""
