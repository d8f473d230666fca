"""Diffusion objectives (DDPM family and flow matching), schedules and samplers.

This package is where training noise is drawn (through an assigner) and where sampling starts from
N(0, I); models never draw noise themselves.
"""

from .objective import DiffusionObjective, ModelFn, ObjectiveConfig
from .schedules import BETA_SCHEDULES, alphas_cumprod, make_betas

__all__ = ["BETA_SCHEDULES", "DiffusionObjective", "ModelFn", "ObjectiveConfig", "alphas_cumprod", "make_betas"]
