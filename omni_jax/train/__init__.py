"""Training: the phase-masked step (the loop, data and checkpoints build around it)."""
