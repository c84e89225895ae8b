"""The trainer: configuration, data assembly, callbacks, checkpoints, generation and the run folder."""
