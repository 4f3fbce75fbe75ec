"""Tracking layer: MLflow connection, tracked training runs, the pyfunc model, the registry."""
