"""`python -m local_ai` runs the CLI."""

from local_ai.cli.app import main

main()
