"""How close a run came to each detector's threshold (for calibration).

`margins(steps)` summarises a run's logged statistics with the quantity each
default detector compares to its threshold, at its worst over the run:

- dead: the highest dead fraction (window measure) of any ReLU layer;
- saturated: the highest `act_saturated_frac` of a hidden sigmoid/tanh layer;
- output_spread: the lowest `act_example_std` of the output layer;
- vanishing: the lowest first/last relative-gradient ratio (3+ layers);
- grad_max: the highest global gradient norm;
- osc_spread: the highest (p90 - p10) / median of the loss over 50 steps;
- still: the highest fraction of weighted layers with update ratio < 1e-7
  (or zero gradient);
- update: the highest median (over 50 steps) of the largest layer update
  ratio ||dW||/||W||;
- final_loss: the median loss of the last 20 logged steps.
"""

import numpy as np

from training_health.detectors.base import output_rows
from training_health.detectors.vanishing import relative_gradients


def margins(steps):
    out = dict(dead=0.0, saturated=0.0, output_spread=float("inf"), vanishing=float("inf"),
               grad_max=0.0, osc_spread=0.0, update=0.0, still=0.0, final_loss=float("nan"))
    losses = []
    largest_update = []
    for s in steps:
        names = s.layer_stats
        for i, info in enumerate(s.layers):
            row = s.layer_values[i]
            if info.activation in ("relu", "relu6"):
                v = row[names.index("dead_frac_window")]
                if np.isfinite(v):
                    out["dead"] = max(out["dead"], float(v))
            if info.activation in ("sigmoid", "tanh") and i not in output_rows(s):
                v = row[names.index("act_saturated_frac")]
                if np.isfinite(v):
                    out["saturated"] = max(out["saturated"], float(v))
        for i in output_rows(s):
            v = s.layer_values[i, names.index("act_example_std")]
            if np.isfinite(v):
                out["output_spread"] = min(out["output_spread"], float(v))
        rel = relative_gradients(s)
        if len(rel) >= 3:
            out["vanishing"] = min(out["vanishing"], rel[0][2] / rel[-1][2])
        g = s.global_values.get("grad_norm", float("nan"))
        if np.isfinite(g):
            out["grad_max"] = max(out["grad_max"], float(g))
        weighted = [i for i, info in enumerate(s.layers) if info.has_weights]
        if weighted:
            ratios = s.layer_values[weighted, names.index("update_ratio")]
            grads = s.layer_values[weighted, names.index("grad_norm")]
            still = np.mean((ratios < 1e-7) | (grads == 0))
            out["still"] = max(out["still"], float(still))
            finite = ratios[np.isfinite(ratios)]
            largest_update.append(float(finite.max()) if finite.size else np.nan)
        loss = s.global_values.get("loss", float("nan"))
        if np.isfinite(loss):
            losses.append(float(loss))
    for end in range(50, len(losses) + 1, 10):
        window = np.array(losses[end - 50:end])
        median = np.median(window)
        if median > 0:
            p10, p90 = np.percentile(window, [10, 90])
            out["osc_spread"] = max(out["osc_spread"], float((p90 - p10) / median))
    for end in range(50, len(largest_update) + 1, 10):
        window = np.array(largest_update[end - 50:end])
        if np.isfinite(window).any():
            out["update"] = max(out["update"], float(np.nanmedian(window)))
    if losses:
        out["final_loss"] = float(np.median(losses[-20:]))
    return out


def format_margins(m):
    return " ".join("%s=%.3g" % (k, v) for k, v in m.items())
