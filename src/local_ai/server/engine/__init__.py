"""The engine worker process (imported only there and in benchmarks)."""
