"""Stall detectors: small pure classes that turn statistics into alerts.

Each detector watches one kind of problem (`records.KINDS`) and has
`update(step, stats) -> list[Alert]` and `reset()`; none does I/O. A
`DetectorSuite` runs several over the same stream: the online logger calls
it every logged step, `training-health check` replays it over event files.
"""

from training_health.detectors.base import Detector, Finding
from training_health.detectors.dead_units import DeadUnitsDetector
from training_health.detectors.exploding import ExplodingGradientsDetector
from training_health.detectors.nan_inf import NanInfDetector
from training_health.detectors.oscillation import OscillatingLossDetector
from training_health.detectors.saturation import SaturationDetector
from training_health.detectors.stalled import StalledDetector
from training_health.detectors.vanishing import VanishingGradientsDetector


def default_detectors():
    """A new instance of every detector with its default knobs."""
    return [
        NanInfDetector(),
        ExplodingGradientsDetector(),
        VanishingGradientsDetector(),
        DeadUnitsDetector(),
        SaturationDetector(),
        OscillatingLossDetector(),
        StalledDetector(),
    ]


class DetectorSuite:
    """Runs several detectors over one stream of logged steps.

    Args:
        detectors: a list of detector instances (objects with `update(step,
            stats)` and `reset()`). Defaults to `default_detectors()`.
    """

    def __init__(self, detectors=None):
        if detectors is None:
            detectors = default_detectors()
        detectors = list(detectors)
        for d in detectors:
            if not (callable(getattr(d, "update", None)) and callable(getattr(d, "reset", None))):
                raise ValueError(
                    "each detector needs update(step, stats) and reset() methods; "
                    "received %r" % (d,)
                )
        self.detectors = detectors

    def update(self, step, stats):
        """Feeds one logged step to every detector.

        Args:
            step: the global step (only increases within a run).
            stats: a `records.StepStats`.

        Returns:
            The alerts raised or cleared at this step (`records.Alert`), in
            detector order.
        """
        alerts = []
        for detector in self.detectors:
            alerts.extend(detector.update(step, stats))
        return alerts

    def reset(self):
        """Resets every detector (call at the start of training)."""
        for detector in self.detectors:
            detector.reset()

    def replay(self, steps):
        """Resets, then feeds every `StepStats` of `steps`; returns all alerts."""
        self.reset()
        alerts = []
        for stats in steps:
            alerts.extend(self.update(stats.step, stats))
        return alerts


__all__ = [
    "DeadUnitsDetector",
    "Detector",
    "DetectorSuite",
    "ExplodingGradientsDetector",
    "Finding",
    "NanInfDetector",
    "OscillatingLossDetector",
    "SaturationDetector",
    "StalledDetector",
    "VanishingGradientsDetector",
    "default_detectors",
]
