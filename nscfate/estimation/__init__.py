"""After training: calibration, fate fractions under prior shift with intervals, OOD flags."""

from nscfate.estimation.estimator import (
    ESTIMATION_KEY,
    EstimationSettings,
    FateEstimator,
    fit_estimator,
)

__all__ = ["ESTIMATION_KEY", "EstimationSettings", "FateEstimator", "fit_estimator"]
