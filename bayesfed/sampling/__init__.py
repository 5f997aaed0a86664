"""Sampling: a PyMC model compiled and sampled by NUTS, reproducibly; imports no stage."""
