"""Diffusion policies: the FiLM-conditioned 1-D UNet, observation encoders and :class:`DiffusionPolicy`."""

from diffpolicy_immix.policy.diffusion_policy import DiffusionPolicy, PolicyConfig, policy_summary
from diffpolicy_immix.policy.encoders import ENCODERS, LowDimEncoder, make_obs_encoder
from diffpolicy_immix.policy.unet1d import ConditionalResidualBlock1D, ConditionalUnet1D, SinusoidalPosEmb

__all__ = [
    "ENCODERS",
    "ConditionalResidualBlock1D",
    "ConditionalUnet1D",
    "DiffusionPolicy",
    "LowDimEncoder",
    "PolicyConfig",
    "SinusoidalPosEmb",
    "make_obs_encoder",
    "policy_summary",
]
