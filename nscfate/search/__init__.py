"""Search layer: nscfate's Optuna sweeper (search spaces, studies, pruning, MLflow parent runs)."""
