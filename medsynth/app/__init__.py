"""What users run: the command line, paper notebooks and sweeps on SLURM, and the demo."""
