"""Data layer: synthetic generator, ingestion, dataset store, splits, normalisation, datamodule."""
