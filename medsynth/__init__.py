"""Diffusion models for medical image synthesis: one tested library for MGDM, MRI synthesis, M2D, multiscale and PDS

Modules:

- `medsynth.folders`: What medsynth may delete, and one writer per folder: a marker on every folder medsynth makes, checks before `--overwrite` replaces one, a lock held for a writer's lifetime, and whether the process behind a run is alive."""

__version__ = "0.0.1"
