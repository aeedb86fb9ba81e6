"""Training: the loop, reference strategies, distributed wrapping, checkpoints, the run directory."""
