"""diffpolicy_immix: immiscible noise assignment for diffusion policies and image generators."""

__version__ = "0.1.0"
