"""Training layer: the LightningModule, evaluation of predictions, plots, and ``train(cfg)``."""
