"""Console-script entry points, one verb per step (nscfate-data, nscfate-train, ...)."""
