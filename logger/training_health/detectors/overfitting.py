"""overfitting: the validation loss rises while the training loss falls."""

import math

from training_health.detectors import hints
from training_health.detectors.base import check_float, check_int
from training_health.records import Alert


def _finite(metrics, name):
    value = metrics.get(name)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class OverfittingDetector:
    """Raises `overfitting` when the validation loss turns up while the
    training loss keeps falling.

    An epoch-level detector (`level = "epoch"`): it reads the finished
    epochs (`records.EpochStats`, fed by `DetectorSuite.update_epoch`), not
    the steps, and judges only the epochs that end with a validation loss
    (`val_loss`: `fit` got validation data, or the loop reported one). Like
    Keras's `EarlyStopping(monitor="val_loss")`, it keeps the best (lowest)
    validation loss; an epoch improves on it when it is lower by more than
    `min_delta` of it. The alert is raised at an epoch when all of:

    - the best validation loss is `patience` or more validated epochs old
      (none since improved on it);
    - the validation loss now is above the lowest seen by more than
      `min_delta` of it: it rose, it did not just level off;
    - the training loss (`loss`, the epoch's mean) now is below its value
      at the epoch of the lowest validation loss by more than `min_delta`
      of it: the model still fits the training data better. A run that
      has converged, where both losses level off, stays silent.

    The episode closes (a `cleared` record) when the validation loss
    improves on its best again.

    Args:
        patience: validated epochs without a new best validation loss before
            the alert. Defaults to 3: one or two epochs above the best are
            common noise of a run near its best epoch (Keras's own default
            of 0 stops at the first); three in a row while the training
            loss keeps falling is a trend.
        min_delta: the smallest relative change that counts, for the
            improvement, the rise and the fall. Defaults to 0.01 (1% of the
            loss): changes within 1% are the epoch-to-epoch noise of a run
            that has levelled off.
    """

    kind = "overfitting"
    level = "epoch"

    def __init__(self, patience=3, min_delta=0.01):
        self.patience = check_int("patience", patience, minimum=1)
        self.min_delta = check_float("min_delta", min_delta, 0.0, 1.0)
        self.reset()

    def reset(self):
        """Forgets every epoch seen (call at the start of training)."""
        self._best = None  # _Epoch of the last improvement by more than min_delta
        self._since_best = 0  # validated epochs since then
        self._lowest = None  # _Epoch of the lowest validation loss
        self._last_step = None
        self._open = False

    def update(self, step, stats):
        """The alerts (`records.Alert`, possibly none) raised or cleared by
        one finished epoch: `stats`, a `records.EpochStats` at `step` (its
        last training step; a step that goes back starts a new run)."""
        step = int(step)
        if self._last_step is not None and step <= self._last_step:
            self.reset()
        self._last_step = step
        val = _finite(stats.metrics, "val_loss")
        if val is None:
            return []  # no validation at this epoch (or a non-finite one: nan_inf's)
        now = _Epoch(stats.epoch, step, val, _finite(stats.metrics, "loss"))
        if self._lowest is None or val < self._lowest.val:
            self._lowest = now
        best = self._best
        if best is None or val < best.val - self.min_delta * abs(best.val):
            self._best = now
            self._since_best = 0
            if self._open:
                self._open = False
                return [Alert(self.kind, step, None, "warning",
                              "overfitting no longer observed at step %d: the validation loss "
                              "reached a new best, %.4g" % (step, val), "", cleared=True)]
            return []
        self._since_best += 1
        lowest = self._lowest
        if (self._open or self._since_best < self.patience or now.train is None
                or lowest.train is None or val <= lowest.val + self.min_delta * abs(lowest.val)
                or now.train >= lowest.train - self.min_delta * abs(lowest.train)):
            return []
        self._open = True
        rise = 100 * (val / lowest.val - 1) if lowest.val > 0 else float("inf")
        message = ("validation loss %.4g at epoch %d is %.0f%% above its lowest, %.4g at epoch %d "
                   "(step %d), while the training loss fell from %.4g to %.4g over those %d epochs"
                   % (val, now.epoch, rise, lowest.val, lowest.epoch, lowest.step, lowest.train,
                      now.train, now.epoch - lowest.epoch))
        return [Alert(self.kind, step, None, "warning", message,
                      hints.overfitting(lowest.epoch, lowest.val, now.epoch, val, self.patience))]


class _Epoch:
    """What the detector keeps of one validated epoch."""

    __slots__ = ("epoch", "step", "val", "train")

    def __init__(self, epoch, step, val, train):
        self.epoch, self.step, self.val, self.train = epoch, step, val, train
