"""Diffusion policies: denoisers (FiLM 1-D UNet, residual MLP, transformer), observation encoders (low-dim;
camera images: small CNN or ResNet-18 with GroupNorm and spatial softmax) and :class:`DiffusionPolicy`."""

from diffpolicy_immix.policy.denoisers import MLPConfig, MLPDenoiser, TransformerConfig, TransformerDenoiser
from diffpolicy_immix.policy.diffusion_policy import DENOISERS, DiffusionPolicy, PolicyConfig, policy_summary
from diffpolicy_immix.policy.encoders import ENCODERS, IMAGE_ENCODERS, LowDimEncoder, make_obs_encoder
from diffpolicy_immix.policy.unet1d import ConditionalResidualBlock1D, ConditionalUnet1D, SinusoidalPosEmb
from diffpolicy_immix.policy.vision import MultiModalEncoder, VisionConfig

__all__ = [
    "DENOISERS",
    "MLPConfig",
    "MLPDenoiser",
    "TransformerConfig",
    "TransformerDenoiser",
    "ENCODERS",
    "IMAGE_ENCODERS",
    "MultiModalEncoder",
    "VisionConfig",
    "ConditionalResidualBlock1D",
    "ConditionalUnet1D",
    "DiffusionPolicy",
    "LowDimEncoder",
    "PolicyConfig",
    "SinusoidalPosEmb",
    "make_obs_encoder",
    "policy_summary",
]
