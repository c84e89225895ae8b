"""The diffusion core: noise schedules, parameterisations, training objectives, samplers, guidance and bridges.
Knows tensors, not files."""
