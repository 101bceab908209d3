"""``python -m nntune`` runs the CLI."""

from nntune.cli import main

main()
