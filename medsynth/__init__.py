"""Diffusion models for medical image synthesis: one tested library for MGDM, MRI synthesis, M2D, multiscale and PDS

Modules:

- `medsynth.core.folders`: What medsynth may delete, and one writer per folder: a marker on every folder medsynth makes, checks before `--overwrite` replaces one, a lock held for a writer's lifetime, and whether the process behind a run is alive."""

__version__ = "0.0.1"

from .compat import install as _install
_install()   # medsynth 0.0.1's module names (medsynth.train, ...) import for one release
