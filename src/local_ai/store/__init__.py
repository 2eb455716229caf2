"""Model store, state file, apply lock and lock file."""
