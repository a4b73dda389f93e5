"""constant_output: the model's output does not depend on its input."""

import numpy as np

from training_health.detectors import hints
from training_health.detectors.base import (
    MODEL, Detector, Finding, StepWindow, check_float, check_int, finite, output_rows)
from training_health.detectors.oscillation import moves_with_data_order
from training_health.detectors.saturation import OUTPUT_BOUNDED
from training_health.detectors.stalled import _halves_differ


# Relative spread at or below which an output counts as exactly constant
# (SaturationDetector's `constant_std`): such an output is reported as
# saturation's constant answer, not here.
EXACTLY_CONSTANT = 1e-6


class ConstantOutputDetector(Detector):
    """Raises `constant_output` when the output ignores the input and the loss
    sits still.

    Two conditions:

    - still from the first step (model-wide, critical): the global gradient
      norm has been exactly 0 on every logged step since the first one, or
      the loss has had exactly the same value on every one of them (every
      batch holds other examples, so a loss that never changes does not
      depend on them), for at least `still_patience` steps. The loss cannot
      move, whatever its value: a loss of exactly 0 here is not convergence
      but a loss that does not fit the output (softmax over one unit, a loss
      given probabilities it cannot differentiate through). A healthy run's
      gradient is never exactly 0 at its first step, and its batch losses
      differ.
    - collapsed (per output layer with a bounded activation, warning): over
      the last `patience` steps the output's spread across the batch
      (`act_example_std`, relative to the activation's range) stayed at or
      below `max_spread` on every logged step and did not grow (the median
      of the later half of the window is at most `growth` times the earlier
      half's), while the loss did not improve (the halves test of
      `stalled`). One-hot or 0/1 labels vary across a batch by at least
      sqrt(p (1 - p)) >= 0.1 of the range when the rarest class has 1% of
      the examples, so an output that varies by 1e-3 of its range follows
      under 1% of what the labels do: it answers about the same constant
      for every example, and a constant's best loss is the label entropy.
      An output that never varies at all (median spread at most 1e-6) is
      left to `saturation`'s constant answer. Nor is it a collapse when
      the loss rises and falls with the order of the batches (the
      data-order test of `oscillating_loss`): batches of one class have
      labels that do not vary within the batch, and a model that answers
      the current class for every example of it is following the data
      order, which `oscillating_loss` reports (two swings suffice here:
      the 100-step window may hold only two class changes, and the loss
      of a collapsed output does not swing beyond its noise even once).

    Args:
        max_spread: relative spread of a collapsed output. Defaults to 1e-3
            (see above). Healthy classifiers vary by 1e-2..3e-1 of the range.
        growth: the spread must not grow more than this between the halves of
            the window. Defaults to 1.5: a deep net leaving its initial
            plateau (tiny initial weights: 1.8e-4..1e-3 of the range in the
            scenario suite) grows its spread several-fold over 100 steps.
        patience: steps of the collapsed window. Defaults to 100: twice the
            stall window, so an initial plateau has time to show its growth.
        min_observations: logged steps needed in the window. Defaults to 10.
        min_delta: relative loss improvement that counts. Defaults to 1e-3
            (as `stalled`).
        still_patience: steps with an exactly zero gradient from the first
            step. Defaults to 10.
        clear_patience: steps without the condition that close the
            episode. Defaults to 50.
        start_from_step: no alert before this step. Defaults to 0.
    """

    kind = "constant_output"

    def __init__(self, max_spread=1e-3, growth=1.5, patience=100, min_observations=10,
                 min_delta=1e-3, still_patience=10, clear_patience=50, start_from_step=0):
        super().__init__(0, 1, clear_patience, start_from_step)
        self.max_spread = check_float("max_spread", max_spread, 0.0, low_open=True)
        self.growth = check_float("growth", growth, 1.0)
        self.window = check_int("patience", patience, minimum=1)
        self.min_window_observations = check_int("min_observations", min_observations, minimum=4)
        self.min_delta = check_float("min_delta", min_delta, 0.0)
        self.still_patience = check_int("still_patience", still_patience, minimum=0)
        self._reset_state()

    def _reset_state(self):
        self._first_step = None
        self._no_gradient = True  # the gradient has been exactly 0 since the first step
        self._same_loss = True  # every loss since the first step equals the first one
        self._first_loss = None
        self._losses = StepWindow(1)
        self._spreads = {}  # output layer name -> StepWindow of relative spreads

    def _evaluate(self, step, stats):
        g = stats.global_values
        out = {}
        if self._first_step is None:
            self._first_step = step
        grad = g.get("grad_norm")
        loss = g.get("loss")
        if self._no_gradient:
            self._no_gradient = grad is not None and finite(grad) and float(grad) == 0.0
        if self._same_loss:
            if self._first_loss is None and loss is not None and finite(loss):
                self._first_loss = float(loss)
            self._same_loss = (loss is not None and finite(loss)
                               and float(loss) == self._first_loss)
        if ((self._no_gradient or self._same_loss)
                and step - self._first_step >= self.still_patience):
            out[MODEL] = self._still_finding(step, stats)
        if loss is None or not finite(loss):
            return out
        self._losses.append(step, (float(loss),))
        losses_ready = self._losses.trim(step, self.window, self.min_window_observations)
        for i in output_rows(stats):
            info = stats.layers[i]
            if info.activation not in OUTPUT_BOUNDED or not info.has_activation:
                continue
            spread = stats.value(i, "act_example_std")
            if not finite(spread):
                continue
            scale = (float(info.bounds[1]) - float(info.bounds[0])) if info.bounds else 1.0
            history = self._spreads.get(info.name)
            if history is None:
                history = self._spreads[info.name] = StepWindow(1)
            history.append(step, (spread / scale,))
            if not (losses_ready and history.trim(step, self.window, self.min_window_observations)):
                continue
            out[info.name] = self._collapsed(step, stats, info, history.values()[:, 0])
        return out

    def _still_finding(self, step, stats):
        loss = stats.global_values.get("loss")
        what = ("the global gradient norm is exactly 0 on every step" if self._no_gradient else
                "the loss is exactly the same on every batch, whatever the examples")
        return Finding(
            "critical",
            "nothing has moved since the first step (%d): %s; the loss is %s at step %d and "
            "cannot move" % (self._first_step, what,
                             "%.4g" % float(loss) if finite(loss) else "not finite", step),
            hints.hint_for(self.kind, stats, first=self.first_stats),
            immediate=True,
        )

    def _collapsed(self, step, stats, info, spreads):
        if spreads.max() > self.max_spread:
            return None
        if np.median(spreads) <= EXACTLY_CONSTANT:
            return None  # never varies at all: saturation's constant answer speaks for it
        half = len(spreads) // 2
        if np.median(spreads[half:]) > self.growth * max(np.median(spreads[:half]), 1e-30):
            return None  # growing: an initial plateau on its way out
        losses = self._losses.values()[:, 0]
        mean = float(losses.mean())
        if _halves_differ(losses[:, None], self.min_delta * abs(mean), improved_only=True)[0]:
            return None
        if moves_with_data_order(losses, swings=2):
            return None  # batches of one class: the same answer within a batch is the data order
        first = self._losses.first_step()
        return Finding(
            "warning",
            "output layer %s (%s) varies across the examples of a batch by at most %.1e of its "
            "range over the last %d steps (from step %d) while the loss stays at %.4g: it gives "
            "about the same answer for every input"
            % (info.name, info.activation, spreads.max(), step - first, first, losses[-1]),
            hints.hint_for(self.kind, stats, info.name, first=self.first_stats),
        )

