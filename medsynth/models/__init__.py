"""Networks: the diffusion UNet, feature encoders (foundation models) and REPA."""

from .unet import *   # medsynth 0.0.1's medsynth.models, kept importable for one release
