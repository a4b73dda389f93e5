"""oscillating_loss: the loss bounces up and down without progress."""

import collections
import statistics

import numpy as np

from training_health.detectors import hints
from training_health.detectors.base import (
    MODEL, Detector, Finding, StepWindow, check_float, check_int, finite)


# Defaults of the data-order test (see OscillatingLossDetector), also what
# ConstantOutputDetector takes as a loss that moves with the data order.
ORDER_RISE = 3.0
ORDER_SWINGS = 3


def moves_with_data_order(losses, swings=ORDER_SWINGS, group=5):
    """Whether a loss series rises and falls with the order of the batches:
    its rises reach ORDER_RISE times the noise in at least `swings` swings
    (`data_order_evidence`)."""
    order = data_order_evidence(losses, group)
    return order is not None and order.ratio >= ORDER_RISE and order.swings >= swings


class OscillatingLossDetector(Detector):
    """Raises `oscillating_loss` when the loss swings widely and goes nowhere,
    or rises and falls with the order of the batches.

    Learning rate too high -- over the last `window` steps: the loss has made no progress (its median
    is not `min_improvement` below the median of the first logged steps),
    it swings widely (the spread between its 10th and 90th percentiles is
    at least `spread` times its median, and at least a third of the
    step-to-step moves are larger than half the median), and the weights
    take large steps (median update ratio at least `min_update_ratio`).
    This is what a learning rate too high for the loss surface looks like.

    Mini-batch noise alone does not trigger it: a run that learns makes
    progress, and a noisy run that learns slowly (small batches, dropout)
    moves its weights by the usual ~1e-3 per step.

    Data order -- over the last `order_window` steps, cut into groups of
    `group` consecutive logged steps: the group means rise, in all, at
    least `order_rise` times what batch-to-batch noise explains, by at
    least the median loss, in at least `order_swings` separate rises larger
    than four noise deviations, while the learning rate did not rise. With
    shuffled data each batch is a fresh draw: consecutive group means
    differ only by noise (the standard deviation of a group mean is
    sigma/sqrt(group), sigma the median within-group standard deviation),
    so their rises add up to about (groups - 1) * sigma / sqrt(pi * group),
    and the loss falls on the whole. Batches of one class (or one kind of
    example) at a time make the loss fall while the model fits the current
    class and jump when the next one starts: rises many times the noise.
    A schedule that raises the learning rate (warmup, cyclic, restarts)
    also raises the loss: such windows are left alone.

    Args:
        window: steps (batches) looked at. Defaults to 50.
        min_observations: logged steps needed in the window. Defaults to 10.
        reference_steps: the reference is the median loss of the first this
            many steps (at least 5 logged points). Defaults to 20.
        spread: (p90 - p10) / median over the window. Defaults to 1.0: the
            per-batch loss of the scenario suite's noisiest healthy run
            (batches of 4, dropout 0.5, 20% wrong labels) spreads up to 0.85
            of its median over 50 steps, the Adam(0.5) run up to 1.4. Larger
            spreads also occur in healthy runs whose loss converges near
            zero; the progress test keeps those silent.
        min_improvement: relative improvement of the window median over the
            reference that counts as progress. Defaults to 0.1.
        min_update_ratio: the median over layers of the update-to-weight ratio
            ||dW||/||W|| (median over the window) must reach this, when it is
            measured. Defaults to 1e-2, ten times the typical 1e-3 (CS231n):
            from the loss alone, bouncing cannot be told from the noise of
            small batches on a run that learns slowly (a synthetic stream
            with 45% batch noise and a slow trend passes the loss tests),
            while a learning rate too high shows in every step's update
            (3.7e-2..5e-2 in the scenario suite's Adam(0.5) run, at most
            2e-2 in its healthy runs).
        patience: steps the condition must last. Defaults to 0: the window
            is the evidence.
        clear_patience: steps without the condition that close the
            episode. Defaults to 100.
        start_from_step: no alert before this step. Defaults to 0.
        order_window: steps of the data-order test (at least 8 groups of
            logged steps). Defaults to 200.
        group: consecutive logged steps per group. Defaults to 5.
        order_rise: the group means' rises over what noise explains.
            Defaults to 3.0: a ratio near 1 is noise (shuffled runs measure
            0.5..1.5; the sum of 40 noisy rises varies by about 20%), and
            batches sorted by class give 3 to 30 while the loss swings.
        order_swings: separate rises of more than four noise deviations
            needed (one outlier batch or one restart is not an order).
            Defaults to 3.
    """

    kind = "oscillating_loss"

    def __init__(self, window=50, min_observations=10, reference_steps=20, spread=1.0,
                 min_improvement=0.1, min_update_ratio=1e-2, patience=0, clear_patience=100,
                 start_from_step=0, order_window=200, group=5, order_rise=ORDER_RISE,
                 order_swings=ORDER_SWINGS):
        super().__init__(patience, 1, clear_patience, start_from_step)
        self.min_update_ratio = check_float("min_update_ratio", min_update_ratio, 0.0)
        self.window = check_int("window", window, minimum=1)
        self.min_window_observations = check_int("min_observations", min_observations, minimum=3)
        self.reference_steps = check_int("reference_steps", reference_steps, minimum=1)
        self.spread = check_float("spread", spread, 0.0, low_open=True)
        self.min_improvement = check_float("min_improvement", min_improvement, 0.0, 1.0)
        self.order_window = check_int("order_window", order_window, minimum=1)
        self.group = check_int("group", group, minimum=2)
        self.order_rise = check_float("order_rise", order_rise, 1.0, low_open=True)
        self.order_swings = check_int("order_swings", order_swings, minimum=1)
        self._reset_state()

    def _reset_state(self):
        self._order = StepWindow(2)  # loss, learning rate (NaN: unknown)
        self._history = StepWindow(2)  # loss, median update ratio (NaN: none)
        self._reference_values = []
        self._reference = None
        self._reference_end = None

    def _evaluate(self, step, stats):
        loss = stats.global_values.get("loss")
        if loss is None or not finite(loss):
            return {}
        loss = float(loss)
        order = self._data_order(step, stats, loss)
        if order is not None:
            return {MODEL: order}
        if self._reference is None:
            self._reference_values.append((step, loss))
            first = self._reference_values[0][0]
            n = len(self._reference_values)
            if n >= self.reference_steps or (step - first >= self.reference_steps - 1 and n >= 5):
                self._reference = float(np.median([v for _, v in self._reference_values]))
                self._reference_end = step
        ratio = _median_update_ratio(stats)
        self._history.append(step, (loss, float("nan") if ratio is None else ratio))
        ready = self._history.trim(step, self.window, self.min_window_observations)
        if self._reference is None or not ready:
            return {}
        if self._history.first_step() <= self._reference_end:
            return {}  # the window must not overlap the reference
        rows = self._history.values()
        values = rows[:, 0]
        # statistics.median on these short lists: np.median costs ~5x more
        # and releases the GIL on every call, which a training loop feels
        ratios = rows[:, 1]
        ratios = ratios[~np.isnan(ratios)].tolist()
        update = statistics.median(ratios) if ratios else None
        if update is not None and update < self.min_update_ratio:
            return {MODEL: None}
        median = float(np.median(values))
        if median <= 0:
            return {MODEL: None}
        p10, p90 = np.percentile(values, [10, 90])
        relative_spread = (p90 - p10) / median
        big_moves = float(np.mean(np.abs(np.diff(values)) > 0.5 * median))
        progress = median < (1.0 - self.min_improvement) * self._reference
        if progress or relative_spread < self.spread or big_moves < 1.0 / 3.0:
            return {MODEL: None}
        return {MODEL: Finding(
            "warning",
            "loss swings between %.3g and %.3g (10th-90th percentile, median %.3g) over "
            "the last %d steps without improving on its start (%.3g) at step %d%s"
            % (p10, p90, median, self.window, self._reference, step,
               "; weights change by %.1e of their norm per step" % update
               if update is not None else ""),
            hints.hint_for(self.kind, stats),
        )}


    def _data_order(self, step, stats, loss):
        """The data-order finding at `step`, or None."""
        lr = stats.global_values.get("learning_rate")
        self._order.append(step, (loss, float(lr) if lr is not None and finite(lr) else np.nan))
        min_points = 8 * self.group
        self._order.trim(step, self.order_window, min_points)
        if len(self._order) < min_points:
            return None  # judged from 8 groups on, over at most the last `order_window` steps
        rows = self._order.values()
        n = len(rows) // self.group
        tail = rows[len(rows) - n * self.group:]
        rates = tail[:, 1][~np.isnan(tail[:, 1])]
        if len(rates) > 1 and np.any(np.diff(rates) > 0):
            return None  # a schedule raised the learning rate: it explains rises
        order = data_order_evidence(tail[:, 0], self.group)
        if order is None or order.ratio < self.order_rise or order.swings < self.order_swings:
            return None
        swings, total, median, ratio, sigma = (order.swings, order.total, order.median,
                                               order.ratio, order.sigma)
        return Finding(
            "warning",
            "loss rises and falls with the order of the batches: over the last %d steps its "
            "%d-step means rose %d times by more than the batch noise allows, %.3g in all "
            "(median loss %.3g), %.1fx what batch-to-batch noise (std %.3g) explains, at step %d"
            % (step - int(self._order.first_step()), self.group, swings, total, median,
               min(ratio, 999.0), sigma, step),
            hints.data_order(),
        )


OrderEvidence = collections.namedtuple("OrderEvidence", "ratio swings total median sigma")


def data_order_evidence(losses, group=5):
    """How much a loss series rises and falls beyond batch noise.

    `losses` (consecutive logged batch losses) is cut into groups of
    `group`; sigma is the median within-group standard deviation (the batch
    noise; a median, so groups holding a jump do not inflate it). Returns
    None when fewer than 2 groups, or when the median loss is not positive or
    the group means' rises add up to less than it (nothing material rose);
    else an `OrderEvidence`: `ratio` of the summed rises of the group means
    to what noise explains, (groups - 1) * sigma / sqrt(pi * group) (inf for
    sigma 0); `swings`, the rises of more than four noise deviations of a
    difference of two group means (4 * sigma * sqrt(2 / group)); `total`
    (the summed rises), `median` (of the losses) and `sigma`.
    """
    losses = np.asarray(losses, dtype=np.float64)
    n = len(losses) // group
    if n < 2:
        return None
    groups = losses[len(losses) - n * group:].reshape(n, group)
    means = groups.mean(axis=1)
    sigma = float(np.median(groups.std(axis=1, ddof=1)))
    moves = np.diff(means)
    rises = moves[moves > 0]
    total = float(rises.sum())
    median = float(np.median(groups))
    if median <= 0 or total < median:
        return None
    noise = (n - 1) * sigma / np.sqrt(np.pi * group)
    ratio = total / noise if noise > 0 else float("inf")
    swings = int(np.sum(rises > 4.0 * sigma * np.sqrt(2.0 / group)))
    return OrderEvidence(ratio, swings, total, median, sigma)


def _median_update_ratio(stats):
    """Median over layers with weights of the update ratio, or None."""
    col = stats.layer_stats.index("update_ratio")
    values = [float(stats.layer_values[i, col]) for i, info in enumerate(stats.layers)
              if info.has_weights]
    values = [v for v in values if finite(v)]
    return statistics.median(values) if values else None
