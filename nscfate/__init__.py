"""nscfate: predict neural-stem-cell fate from label-free bright-field crops."""

__version__ = "0.1.0"
