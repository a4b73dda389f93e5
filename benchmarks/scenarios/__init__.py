"""Scenario suite: small Keras runs with a known bug, and healthy traps.

Each scenario trains a small model on synthetic data with a fixed seed for a
few epochs with `HealthCallback`, then the run's event files are checked
the way `training-health check` does (every step replayed through the
default detectors, plus the alerts logged online). A buggy scenario must
get its expected alert kind, a healthy one no alert at all.

    from benchmarks.scenarios import SCENARIOS, run_scenario
    result = run_scenario(SCENARIOS["stalled_cnn"], "/tmp/runs/stalled_cnn")

`benchmarks/scenario_report.py` runs them all and prints the figures.
`heldout` holds runs written after the calibration (see its docstring).
"""

import dataclasses
import math
import time

from benchmarks.scenarios import buggy, healthy, heldout, heldout2, heldout3
from benchmarks.scenarios.common import Scenario

SCENARIOS = {s.name: s for s in
             buggy.SCENARIOS + healthy.SCENARIOS + heldout.SCENARIOS + heldout2.SCENARIOS
             + heldout3.SCENARIOS}
BUGGY = tuple(s.name for s in buggy.SCENARIOS)
HEALTHY = tuple(s.name for s in healthy.SCENARIOS)
HELDOUT = tuple(s.name for s in heldout.SCENARIOS)
HELDOUT2 = tuple(s.name for s in heldout2.SCENARIOS)
HELDOUT3 = tuple(s.name for s in heldout3.SCENARIOS)


@dataclasses.dataclass
class Result:
    """What one scenario run gave.

    Attributes:
        name: scenario name.
        expected: expected alert kind, or None for a healthy scenario.
        alerts: raised alerts (`records.Alert`) found for the run.
        online_alerts: alerts the callback raised during training.
        steps: logged steps.
        steps_per_epoch: batches per epoch.
        seconds: wall time of training.
    """

    name: str
    expected: object
    alerts: list
    online_alerts: list
    steps: int
    steps_per_epoch: int
    onset: int
    seconds: float
    cause: object = None

    @property
    def kinds(self):
        return sorted({a.kind for a in self.alerts})

    @property
    def detected(self):
        return bool(self.alerts)

    @property
    def right_kind(self):
        return self.expected is not None and self.expected in self.kinds

    @property
    def first_expected_step(self):
        steps = [a.step for a in self.alerts if a.kind == self.expected]
        return min(steps) if steps else None

    @property
    def delay(self):
        """Steps from the problem's onset to the first alert of the expected kind."""
        first = self.first_expected_step
        return None if first is None else max(first - self.onset, 0)

    @property
    def first_hint(self):
        """The hint the user reads first about the expected problem: that of
        the first alert of the incident holding the first alert of the
        expected kind (None when there is no such alert)."""
        first = [a for a in self.alerts if a.kind == self.expected]
        if not first:
            return None
        alert = min(first, key=lambda a: a.step)
        roots = [a for a in self.alerts
                 if a.incident == alert.incident and a.caused_by is None] if alert.incident else []
        return (roots[0] if roots else alert).hint

    @property
    def cause_named(self):
        """Whether that hint names the cause the scenario built in (None: not scored)."""
        if self.cause is None:
            return None
        return self.first_hint is not None and self.cause in self.first_hint

    @property
    def within_first_epoch(self):
        return self.delay is not None and self.delay <= self.steps_per_epoch


def run_scenario(scenario, logdir, seed=0, max_epochs=None, every_n_batches=1):
    """Trains `scenario` into `logdir` and checks the run; returns a Result.

    Args:
        scenario: a `Scenario`.
        logdir: the run's directory (should not exist yet).
        seed: seed of Keras, numpy and Python. Defaults to 0.
        max_epochs: train at most this many epochs (tests use 2 to save
            time). Defaults to None: the scenario's own number.
        every_n_batches: the callback's logging period. Defaults to 1.
    """
    import keras

    from training_health.cli import check

    from training_health.io import reader
    from training_health.keras import HealthCallback

    keras.utils.set_random_seed(seed)
    model, x, y, fit_kwargs = scenario.build()
    if max_epochs is not None:
        fit_kwargs = dict(fit_kwargs, epochs=min(max_epochs, fit_kwargs.get("epochs", 1)))
    callback = HealthCallback(logdir, histogram_every=0, every_n_batches=every_n_batches)
    start = time.perf_counter()
    fit_kwargs = dict(fit_kwargs)
    callbacks = [callback] + list(fit_kwargs.pop("callbacks", []))
    shuffle = fit_kwargs.pop("shuffle", True)  # a scenario may train on data in order
    model.fit(x, y, callbacks=callbacks, verbose=0, shuffle=shuffle, **fit_kwargs)
    seconds = time.perf_counter() - start
    callback.close()
    runs = reader.read_logdir(logdir)
    if len(runs) != 1:
        raise RuntimeError("expected one run under %s; found %d" % (logdir, len(runs)))
    run = runs[0]
    n = len(x[0]) if isinstance(x, (list, tuple)) else len(x)
    steps_per_epoch = math.ceil(n / fit_kwargs.get("batch_size", 32))
    return Result(
        scenario.name, scenario.expected, check.check_run(run), list(callback.alerts),
        len(run.steps), steps_per_epoch, scenario.onset, seconds, scenario.cause,
    )
