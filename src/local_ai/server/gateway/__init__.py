"""The gateway process (imported only by `local-ai server start --foreground`)."""
