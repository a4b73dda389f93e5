"""stalled: loss and metrics not improving while the weights barely change."""

import numpy as np

from training_health.detectors import hints
from training_health.detectors.base import (
    MODEL, Detector, Finding, StepWindow, check_float, check_int, finite, weighted_rows)
from training_health.format import GLOBAL_STATS


def _halves_differ(values, min_delta, improved_only=False):
    """Per column of `values` [steps, columns]: whether the mean of the later
    half of the steps differs from the earlier half's.

    The difference must exceed `min_delta` (a number or one per column) and
    two standard errors of the difference, so batch-to-batch noise does not
    count as change. With `improved_only`, only a decrease counts.
    """
    half = len(values) // 2
    a, b = values[:half], values[half:]
    na, nb = max(len(a), 1), max(len(b), 1)
    # sums rather than ndarray.mean/var: same numbers, a third of the time
    # on these small windows (this runs on every logged step)
    mean_a, mean_b = a.sum(axis=0) / na, b.sum(axis=0) / nb
    diff = mean_a - mean_b
    if not improved_only:
        diff = np.abs(diff)
    var_a = np.square(a - mean_a).sum(axis=0) / na
    var_b = np.square(b - mean_b).sum(axis=0) / nb
    se = np.sqrt(var_a / na + var_b / nb)
    return diff > np.maximum(min_delta, 2.0 * se)


class StalledDetector(Detector):
    """Raises `stalled` when training goes nowhere and the weights stand still.

    Over the last `patience` steps (batches) all of these hold:

    - the loss has not improved: the mean of the later half of the window
      is not lower than the earlier half's by more than `min_delta` (times
      the loss) and two standard errors (noise does not count);
    - no compiled metric has changed in either direction by the same test;
    - the weights barely change: the learning rate is 0, or the loss is
      exactly constant over the window, or some layer's gradient is exactly
      0 on at least `cut_fraction` of the steps of the window (nothing flows
      through it: dead units, a disconnected layer), or at least half of
      the layers with weights moved by less than `min_update_ratio` of their
      norm per step (median over the window), or the weights move by less
      than `low_update_ratio` (median over layers and window) while the
      loss is still within `min_progress` of where the run started (a
      learning rate orders of magnitude too small; a converged run's tail
      moves as little, but its loss has come down);
    - the loss is above `converged_loss`: a loss that converged near zero
      and stays flat is success, not a stall.

    Every logged step enters the window; the window is judged every
    `patience // 10` steps (every step for a patience under 20), which
    delays an alert by at most that many steps and keeps the detector's
    cost per logged step to a few microseconds on average.

    Args:
        patience: steps over which the loss must not improve. Defaults to 50
            (under an epoch of even small datasets, well over the handful of
            steps an early plateau of a healthy run takes to show change in
            the weights).
        min_observations: logged steps needed in the window. Defaults to 10.
        min_delta: relative loss improvement that counts. Defaults to 1e-3
            (Keras's ReduceLROnPlateau uses an absolute 1e-4 per epoch).
        min_update_ratio: ||dW||/||W|| per step below which a layer counts as
            not moving. Defaults to 1e-7: healthy training runs at ~1e-3
            (CS231n) and even a converged SGD run keeps ~1e-5 from gradient
            noise, while a layer with no gradient under Adam decays below
            1e-7 within ~70 steps and is exactly 0 under SGD.
        cut_fraction: share of the window's steps on which a layer's gradient
            must be exactly 0 for it to count as cut off. Defaults to 0.9: a
            healthy layer's gradient is never exactly 0, while a layer behind
            dead ReLUs gets one only when a rare example sparks a unit.
        low_update_ratio: median update ratio below which weights that
            have not taken the loss anywhere since the start count as not
            learning. Defaults to 1e-5: two orders of magnitude below the
            typical 1e-3.
        min_progress: relative fall of the loss from the median of the run's
            first `min_observations` logged losses that counts as having
            learnt. Defaults to 0.1.
        converged_loss: losses below this are never called stalled.
            Defaults to 1e-3.
        clear_patience: steps with moving weights that close the episode
            (while it is open, only the weights are watched: batch noise in
            the loss must not close and reopen it). Defaults to 50.
        start_from_step: no alert before this step. Defaults to 0.
    """

    kind = "stalled"

    def __init__(self, patience=50, min_observations=10, min_delta=1e-3, min_update_ratio=1e-7,
                 cut_fraction=0.9, low_update_ratio=1e-5, min_progress=0.1, converged_loss=1e-3,
                 clear_patience=50, start_from_step=0):
        super().__init__(0, 1, clear_patience, start_from_step)
        self.window = check_int("patience", patience, minimum=1)
        self.min_window_observations = check_int("min_observations", min_observations, minimum=4)
        self.min_delta = check_float("min_delta", min_delta, 0.0)
        self.min_update_ratio = check_float("min_update_ratio", min_update_ratio, 0.0)
        self.cut_fraction = check_float("cut_fraction", cut_fraction, 0.0, 1.0, low_open=True)
        self.low_update_ratio = check_float("low_update_ratio", low_update_ratio, 0.0)
        self.min_progress = check_float("min_progress", min_progress, 0.0, 1.0)
        self.converged_loss = check_float("converged_loss", converged_loss, 0.0)
        self._reset_state()

    def _reset_state(self):
        # Per logged step: loss, learning rate (NaN: unknown), then one
        # column per compiled metric (NaN: not finite or not logged).
        self._steps = StepWindow(2)
        self._metric_names = []
        self._last_metrics = {}
        # Per logged step of the current layer set: update ratios, then
        # zero-gradient flags, of the layers with weights.
        self._names = None
        self._layers = StepWindow(0)
        self._open_finding = None
        self._judged_at = None  # step of the last judgement of the window
        self._start_losses = []  # the run's first logged losses

    def _clear(self):
        self._steps.clear()
        self._layers.clear()
        self._judged_at = None

    @staticmethod
    def _weights_entry(stats):
        """(names, update ratios, zero-gradient flags) of the layers with weights.

        A layer whose gradient is exactly zero counts with ratio 0: it cannot
        learn whatever its optimizer's momentum still does to it (Adam keeps
        moving such weights, by a geometrically shrinking amount, for ~100
        steps). Unmeasured ratios are NaN.
        """
        rows = weighted_rows(stats)
        names = tuple(stats.layers[i].name for i in rows)
        ratios = np.asarray(stats.column("update_ratio"), dtype=np.float64)[rows]
        zero = np.asarray(stats.column("grad_norm"), dtype=np.float64)[rows] == 0.0
        ratios = np.where(zero, 0.0, ratios)
        ratios[~np.isfinite(ratios)] = np.nan
        return names, ratios, zero

    def _append(self, step, loss, lr, metrics, stats):
        for name in metrics:
            if name not in self._metric_names:
                self._metric_names.append(name)
                self._steps.add_column()
        nan = float("nan")
        self._steps.append(step, [loss, lr if finite(lr) else nan]
                           + [metrics.get(name, nan) for name in self._metric_names])
        self._last_metrics = metrics
        names, ratios, zero = self._weights_entry(stats)
        if names != self._names:
            # a new set of layers: their tables start over (loss and metrics do not)
            self._names = names
            self._layers = StepWindow(2 * len(names))
        self._layers.append(step, np.concatenate([ratios, zero]))

    def _evaluate(self, step, stats):
        g = stats.global_values
        loss = g.get("loss")
        if loss is None or not finite(loss):
            self._clear()  # nan_inf speaks for non-finite losses
            return {}
        metrics = {k: float(v) for k, v in g.items()
                   if k not in _NOT_METRICS and finite(v)}
        if len(self._start_losses) < self.min_window_observations:
            self._start_losses.append(float(loss))
        self._append(step, float(loss), g.get("learning_rate"), metrics, stats)
        if self._judged_at is not None and step - self._judged_at < max(1, self.window // 10):
            return {}  # not judged at this step: the key keeps its state
        if not self._steps.trim(step, self.window, self.min_window_observations):
            return {}
        self._judged_at = step
        self._layers.drop_before(self._steps.first_step())
        rows = self._steps.values()
        losses = rows[:, 0]
        mean_loss = float(losses.mean())
        if mean_loss <= self.converged_loss:
            return {MODEL: None}
        track = self._tracks.get(MODEL)
        if track is not None and track.open:
            # an open stall lasts while the weights stand still: batch noise
            # in the loss or metrics must not close and reopen it
            return {MODEL: None if self._stillness(rows) is None else self._open_finding}
        if _halves_differ(losses[:, None], self.min_delta * abs(mean_loss), improved_only=True)[0]:
            return {MODEL: None}
        # every compiled metric logged on every step of the window
        series = rows[:, 2:]
        series = series[:, ~np.isnan(series).any(axis=0)]
        if series.shape[1]:
            min_delta = self.min_delta * np.maximum(np.abs(series.mean(axis=0)), 1e-12)
            if _halves_differ(series, min_delta).any():
                return {MODEL: None}
        still = self._stillness(rows)
        if still is None:
            return {MODEL: None}
        reason, certain = still
        metric_text = "".join(
            ", %s %.4g" % (k, v) for k, v in list(self._last_metrics.items())[:2])
        first = self._steps.first_step()
        self._open_finding = Finding(
            "critical" if certain else "warning",
            "loss %.4g has not improved over the last %d steps (from step %d)%s; %s"
            % (losses[-1], step - first, first, metric_text, reason),
            hints.hint_for(self.kind, stats, first=self.first_stats),
        )
        return {MODEL: self._open_finding}

    def _stillness(self, rows):
        """(why the weights count as standing still, certain?) or None if they move."""
        if np.all(rows[:, 1] == 0):
            return "the learning rate is 0", True
        losses = rows[:, 0]
        if losses.max() - losses.min() <= 1e-7 * max(abs(losses[0]), 1e-12):
            return "the loss is exactly constant", True
        n_layers = len(self._names)
        table = self._layers.values()
        if not n_layers or not len(table):
            return None
        ratios, zero = table[:, :n_layers], table[:, n_layers:]
        # Layers whose gradient was exactly 0 on at least `cut_fraction` of
        # the window: a layer behind dead ReLUs may get a gradient from a
        # rare example now and then (a spark in one batch of twenty) and
        # still learn nothing.
        cut = [name for name, f in zip(self._names, zero.mean(axis=0)) if f >= self.cut_fraction]
        if cut:
            return ("no gradient reaches %s (exactly 0 on %d%%+ of the steps of the window)"
                    % (", ".join(cut[:3]), round(100 * self.cut_fraction)), True)
        if len(table) < self.min_window_observations // 2:
            return None
        measured = ~np.isnan(ratios)
        columns = measured.any(axis=0)
        if not columns.any():
            return None
        # a layer's median update ratio is below the bound when more than
        # half of its measured steps are (cheaper than a NaN-aware median)
        with np.errstate(invalid="ignore"):
            below = np.sum((ratios < self.min_update_ratio) & measured, axis=0)
            zero_update = np.sum((ratios == 0) & measured, axis=0)
        counts = measured.sum(axis=0)
        idle_columns = columns & (2 * below > counts)
        n_layers = int(columns.sum())
        idle = int(idle_columns.sum())
        if idle * 2 < n_layers:
            return self._slow_from_start(ratios, measured, losses)
        if np.all(2 * zero_update[columns] > counts[columns]):
            return ("the weights are not learning (no gradient or update in all %d layers)"
                    % n_layers, True)
        return ("%d of %d layers with weights are not learning (zero gradient or update "
                "ratio < %.0e per step)"
                % (idle, n_layers, self.min_update_ratio), idle == n_layers)


    def _slow_from_start(self, ratios, measured, losses):
        """(why, False) when the weights move orders of magnitude less than
        usual and the loss is still about where the run started, else None."""
        if not self._start_losses:
            return None
        start = float(np.median(self._start_losses))
        if float(losses.mean()) < (1.0 - self.min_progress) * start:
            return None  # it learnt: a converged tail, not a learning rate too low
        per_layer = [float(np.median(ratios[measured[:, j], j]))
                     for j in range(ratios.shape[1]) if measured[:, j].any()]
        if not per_layer:
            return None
        typical = float(np.median(per_layer))
        if not 0 < typical < self.low_update_ratio:
            return None
        return ("the weights move by %.1e of their norm per step (median over layers; ~1e-3 is "
                "typical) and the loss is within %d%% of where it started (%.4g)"
                % (typical, round(100 * self.min_progress), start), False)


_NOT_METRICS = frozenset(GLOBAL_STATS)

