"""Stall detectors: small pure classes that turn statistics into alerts.

Each detector watches one kind of problem (`records.KINDS`) and has
`update(step, stats) -> list[Alert]` and `reset()`; none does I/O. A
`DetectorSuite` runs several over the same stream: the online logger calls
it every logged step, `training-health check` replays it over event files.
The suite groups the alerts into incidents (`incidents.Incidents`): each
alert it returns carries its `incident` and `caused_by`.
"""

from training_health.detectors.base import Detector, Finding
from training_health.detectors.constant_output import ConstantOutputDetector
from training_health.detectors.dead_units import DeadUnitsDetector
from training_health.detectors.exploding import ExplodingGradientsDetector
from training_health.detectors.incidents import Incidents
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
        ConstantOutputDetector(),
        StalledDetector(),
    ]


class DetectorSuite:
    """Runs several detectors over one stream of logged steps.

    Args:
        detectors: a list of detector instances (objects with `update(step,
            stats)` and `reset()`). Defaults to `default_detectors()`.
        incidents: the `incidents.Incidents` that groups the alerts. Defaults
            to one with its default horizon.
    """

    def __init__(self, detectors=None, incidents=None):
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
        self.incidents = incidents if incidents is not None else Incidents()
        self._last_step = None

    def update(self, step, stats):
        """Feeds one logged step to every detector.

        Args:
            step: the global step (only increases within a run).
            stats: a `records.StepStats`.

        Returns:
            The alerts raised or cleared at this step (`records.Alert`), in
            detector order except that causes come before their consequences,
            each with its `incident` and `caused_by`.
        """
        if self._last_step is not None and step <= self._last_step:
            self.incidents.reset()  # the detectors reset themselves too: a new run
        self._last_step = step
        alerts = []
        for detector in self.detectors:
            alerts.extend(detector.update(step, stats))
        return self.incidents.assign(alerts) if alerts else alerts

    def reset(self):
        """Resets every detector and the incidents (call at the start of training)."""
        for detector in self.detectors:
            detector.reset()
        self.incidents.reset()
        self._last_step = None

    def replay(self, steps):
        """Resets, then feeds every `StepStats` of `steps`; returns all alerts."""
        self.reset()
        alerts = []
        for stats in steps:
            alerts.extend(self.update(stats.step, stats))
        return alerts


__all__ = [
    "ConstantOutputDetector",
    "DeadUnitsDetector",
    "Detector",
    "DetectorSuite",
    "ExplodingGradientsDetector",
    "Finding",
    "Incidents",
    "NanInfDetector",
    "OscillatingLossDetector",
    "SaturationDetector",
    "StalledDetector",
    "VanishingGradientsDetector",
    "default_detectors",
]
