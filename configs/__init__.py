"""Hydra configuration files of diffpolicy_immix (installed as package data)."""
