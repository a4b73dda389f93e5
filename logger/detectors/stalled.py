"""stalled: loss and metrics not improving while the weights barely change."""

import collections
import math

import numpy as np

from training_health import hints
from training_health.detectors.base import (
    MODEL, Detector, Finding, check_float, check_int, finite, trim_window, weighted_rows)
from training_health.format import GLOBAL_STATS


def _halves_differ(values, min_delta):
    """Whether the mean of the second half differs from the first half's.

    The difference must exceed `min_delta` and two standard errors of the
    difference, so batch-to-batch noise does not count as change.
    """
    values = np.asarray(values, dtype=np.float64)
    half = len(values) // 2
    a, b = values[:half], values[half:]
    diff = abs(a.mean() - b.mean())
    se = math.sqrt(a.var() / max(len(a), 1) + b.var() / max(len(b), 1))
    return diff > max(min_delta, 2.0 * se)


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
      norm per step (median over the window);
    - the loss is above `converged_loss`: a loss that converged near zero
      and stays flat is success, not a stall.

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
        converged_loss: losses below this are never called stalled.
            Defaults to 1e-3.
        clear_patience: steps with moving weights that close the episode
            (while it is open, only the weights are watched: batch noise in
            the loss must not close and reopen it). Defaults to 50.
        start_from_step: no alert before this step. Defaults to 0.
    """

    kind = "stalled"

    def __init__(self, patience=50, min_observations=10, min_delta=1e-3, min_update_ratio=1e-7,
                 cut_fraction=0.9, converged_loss=1e-3, clear_patience=50, start_from_step=0):
        super().__init__(0, 1, clear_patience, start_from_step)
        self.window = check_int("patience", patience, minimum=1)
        self.min_window_observations = check_int("min_observations", min_observations, minimum=4)
        self.min_delta = check_float("min_delta", min_delta, 0.0)
        self.min_update_ratio = check_float("min_update_ratio", min_update_ratio, 0.0)
        self.cut_fraction = check_float("cut_fraction", cut_fraction, 0.0, 1.0, low_open=True)
        self.converged_loss = check_float("converged_loss", converged_loss, 0.0)
        self._reset_state()

    def _reset_state(self):
        self._history = collections.deque()
        self._open_finding = None

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

    def _evaluate(self, step, stats):
        g = stats.global_values
        loss = g.get("loss")
        if loss is None or not finite(loss):
            self._history.clear()  # nan_inf speaks for non-finite losses
            return {}
        metrics = {k: float(v) for k, v in g.items()
                   if k not in _NOT_METRICS and finite(v)}
        lr = g.get("learning_rate")
        names, ratios, zero = self._weights_entry(stats)
        self._history.append((step, float(loss), metrics, ratios,
                              float(lr) if finite(lr) else None, zero, names))
        if not trim_window(self._history, step, self.window, self.min_window_observations):
            return {}
        losses = [h[1] for h in self._history]
        mean_loss = float(np.mean(losses))
        if mean_loss <= self.converged_loss:
            return {MODEL: None}
        track = self._tracks.get(MODEL)
        if track is not None and track.open:
            # an open stall lasts while the weights stand still: batch noise
            # in the loss or metrics must not close and reopen it
            return {MODEL: None if self._stillness() is None else self._open_finding}
        half = len(losses) // 2
        improved = (np.mean(losses[:half]) - np.mean(losses[half:])
                    > max(self.min_delta * abs(mean_loss), 2.0 * _se(losses, half)))
        if improved:
            return {MODEL: None}
        for name in self._history[-1][2]:
            series = [h[2].get(name) for h in self._history]
            if any(v is None for v in series):
                continue
            if _halves_differ(series, self.min_delta * max(abs(float(np.mean(series))), 1e-12)):
                return {MODEL: None}
        still = self._stillness()
        if still is None:
            return {MODEL: None}
        reason, certain = still
        metric_text = "".join(
            ", %s %.4g" % (k, v) for k, v in list(self._history[-1][2].items())[:2])
        self._open_finding = Finding(
            "critical" if certain else "warning",
            "loss %.4g has not improved over the last %d steps (from step %d)%s; %s"
            % (losses[-1], step - self._history[0][0], self._history[0][0], metric_text, reason),
            hints.hint_for(self.kind, stats),
        )
        return {MODEL: self._open_finding}

    def _layer_table(self, column):
        """[steps, layers] array of entry `column` over the window's steps that
        monitor the same layers as the newest one, and those layers' names."""
        names = self._history[-1][6]
        rows = [h[column] for h in self._history if h[6] == names]
        if not names or not rows:
            return None, names
        return np.stack(rows), names

    def _cut_layers(self):
        """Layers whose gradient was exactly 0 on at least `cut_fraction` of the window.

        A layer behind dead ReLUs may get a gradient from a rare example now
        and then (a spark in one batch of twenty) and still learn nothing.
        """
        zero, names = self._layer_table(5)
        if zero is None:
            return []
        share = zero.mean(axis=0)
        return [name for name, f in zip(names, share) if f >= self.cut_fraction]

    def _stillness(self):
        """(why the weights count as standing still, certain?) or None if they move."""
        lrs = [h[4] for h in self._history]
        if lrs and all(lr == 0 for lr in lrs):
            return "the learning rate is 0", True
        losses = [h[1] for h in self._history]
        if max(losses) - min(losses) <= 1e-7 * max(abs(losses[0]), 1e-12):
            return "the loss is exactly constant", True
        cut = self._cut_layers()
        if cut:
            return ("no gradient reaches %s (exactly 0 on %d%%+ of the steps of the window)"
                    % (", ".join(cut[:3]), round(100 * self.cut_fraction)), True)
        table, _ = self._layer_table(3)
        if table is None or len(table) < self.min_window_observations // 2:
            return None
        measured = ~np.isnan(table)
        columns = measured.any(axis=0)
        if not columns.any():
            return None
        # a layer's median update ratio is below the bound when more than
        # half of its measured steps are (cheaper than a NaN-aware median)
        with np.errstate(invalid="ignore"):
            below = np.sum((table < self.min_update_ratio) & measured, axis=0)
            zero = np.sum((table == 0) & measured, axis=0)
        counts = measured.sum(axis=0)
        frozen_columns = columns & (2 * below > counts)
        n_layers = int(columns.sum())
        frozen = int(frozen_columns.sum())
        if frozen * 2 < n_layers:
            return None
        if np.all(2 * zero[columns] > counts[columns]):
            return ("the weights are not learning (no gradient or update in all %d layers)"
                    % n_layers, True)
        return ("%d of %d layers with weights are not learning (zero gradient or update "
                "ratio < %.0e per step)"
                % (frozen, n_layers, self.min_update_ratio), frozen == n_layers)


_NOT_METRICS = frozenset(GLOBAL_STATS)


def _se(values, half):
    a = np.asarray(values[:half], dtype=np.float64)
    b = np.asarray(values[half:], dtype=np.float64)
    return math.sqrt(a.var() / max(len(a), 1) + b.var() / max(len(b), 1))
