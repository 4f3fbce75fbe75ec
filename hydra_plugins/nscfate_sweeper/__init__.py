"""nscfate's Hydra sweeper plugin (Optuna)."""
