"""PyMC models and every prior, built from sufficient statistics; imports inputs and design."""
