"""Diffusion models for medical image synthesis: one tested library for MGDM, MRI synthesis, M2D, multiscale and PDS"""

__version__ = "0.0.1"

from .compat import install as _install
_install()   # medsynth 0.0.1's module names (medsynth.train, ...) import for one release
