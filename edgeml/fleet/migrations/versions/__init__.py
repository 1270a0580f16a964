"""Migration scripts, oldest first: 0001 initial schema, 0002 rollouts + audit time index."""
