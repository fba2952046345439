"""``python -m cli`` runs the nanobatch command (handy where the console script is not on PATH)."""

from nanobatch.cli.main import main

main()
