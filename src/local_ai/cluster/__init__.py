"""Several Macs serving one model: observing hosts over ssh, MLX launcher files, checks."""
