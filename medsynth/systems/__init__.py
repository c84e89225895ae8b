"""The published systems built from the layers below: multiscale (pyramid), PDS (dual-modal), M2D
(foundation-model guided)."""
