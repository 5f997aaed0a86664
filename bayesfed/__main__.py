"""``python -m bayesfed`` runs the command line."""

from bayesfed.cli import run

run()
