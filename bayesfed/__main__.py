"""``python -m bayesfed`` runs the command line."""

from bayesfed.cli import main

main()
