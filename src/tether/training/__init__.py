"""Training: the loop, reference strategies, distributed wrapping, checkpoints, run directory."""
