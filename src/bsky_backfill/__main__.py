"""`python -m bsky_backfill` runs the CLI."""

from bsky_backfill.cli import main

main()
