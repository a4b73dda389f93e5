"""Stall detectors: small pure classes that turn statistics into alerts.

Each detector watches one kind of problem (`records.KINDS`) and has
`update(step, stats) -> list[Alert]` and `reset()`; none does I/O. Most
read the logged steps (`records.StepStats`); an epoch-level detector
(`level = "epoch"`, e.g. `OverfittingDetector`) reads the finished epochs
(`records.EpochStats`) instead. A `DetectorSuite` runs several over the
same stream: the online logger calls it every logged step and at each
epoch's end, `training-health check` replays it over event files.
The suite groups the alerts into incidents (`incidents.Incidents`): each
alert it returns carries its `incident` and `caused_by`.
"""

from training_health.detectors.base import Detector, Finding
from training_health.records import EpochStats
from training_health.detectors.constant_output import ConstantOutputDetector
from training_health.detectors.dead_units import DeadUnitsDetector
from training_health.detectors.exploding import ExplodingGradientsDetector
from training_health.detectors.incidents import Incidents
from training_health.detectors.nan_inf import NanInfDetector
from training_health.detectors.oscillation import OscillatingLossDetector
from training_health.detectors.overfitting import OverfittingDetector
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
        OverfittingDetector(),
    ]


def is_epoch_level(detector):
    """True for a detector that reads finished epochs (`level = "epoch"`)."""
    return getattr(detector, "level", "step") == "epoch"


class DetectorSuite:
    """Runs several detectors over one stream of logged steps and finished
    epochs (`update` for a step, `update_epoch` for an epoch; epoch-level
    detectors get only the epochs, the others only the steps).

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
        self._step_detectors = [d for d in detectors if not is_epoch_level(d)]
        self._epoch_detectors = [d for d in detectors if is_epoch_level(d)]
        self.incidents = incidents if incidents is not None else Incidents()
        self._last_step = None

    def update(self, step, stats):
        """Feeds one logged step to every step-level detector.

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
        for detector in self._step_detectors:
            alerts.extend(detector.update(step, stats))
        return self.incidents.assign(alerts) if alerts else alerts

    def update_epoch(self, step, stats):
        """Feeds one finished epoch to every epoch-level detector. Call it
        after the epoch's logged steps were fed to `update`.

        Args:
            step: the global step of the epoch's last training step.
            stats: a `records.EpochStats`.

        Returns:
            The alerts raised or cleared (`records.Alert`), each with its
            `incident` and `caused_by`.
        """
        alerts = []
        for detector in self._epoch_detectors:
            alerts.extend(detector.update(step, stats))
        return self.incidents.assign(alerts) if alerts else alerts

    def reset(self):
        """Resets every detector and the incidents (call at the start of training)."""
        for detector in self.detectors:
            detector.reset()
        self.incidents.reset()
        self._last_step = None

    def feed(self, steps, epochs=()):
        """Feeds logged steps and finished epochs in step order (an epoch
        after the steps up to its own); returns the alerts of all."""
        alerts = []
        for stats in in_step_order(steps, epochs):
            if isinstance(stats, EpochStats):
                alerts.extend(self.update_epoch(stats.step, stats))
            else:
                alerts.extend(self.update(stats.step, stats))
        return alerts

    def replay(self, steps, epochs=()):
        """Resets, then feeds every `StepStats` of `steps` and `EpochStats`
        of `epochs` in step order; returns all alerts."""
        self.reset()
        return self.feed(steps, epochs)


def in_step_order(steps, epochs):
    """`steps` (StepStats) and `epochs` (EpochStats), each in logged order,
    merged by step: an epoch comes after the steps up to its own step."""
    out = []
    epochs = list(epochs)
    i = 0
    for stats in steps:
        while i < len(epochs) and epochs[i].step < stats.step:
            out.append(epochs[i])
            i += 1
        out.append(stats)
    out.extend(epochs[i:])
    return out


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
    "OverfittingDetector",
    "SaturationDetector",
    "StalledDetector",
    "VanishingGradientsDetector",
    "default_detectors",
]
