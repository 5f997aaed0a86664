"""Posterior numbers and verdicts from the draws; imports inputs, design, modelling, sampling."""
