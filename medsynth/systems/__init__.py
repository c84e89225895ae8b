"""The published systems built from the layers below: multiscale (pyramid), PDS (dual-modal), M2D (foundation-model
guided), MGDM (uncertainty guidance). Those that change training plug into it as `medsynth.training.system.System`s,
registered through the `medsynth.systems` entry points in pyproject.toml."""
