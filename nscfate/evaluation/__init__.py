"""Judging a trained network: per-cell inference and every metric name and table (``evaluate``),
a saved checkpoint evaluated on its own (``checkpoint``), warnings for runs that learned nothing
(``health``) and the figures (``plots``). Knows neither MLflow nor Optuna."""
