"""Hints: likely causes and fixes, drawn from what was measured.

Every function here reads one `records.StepStats` (the step at which an alert
is raised) and returns short clauses, each naming a measured fact and what to
do about it. `hint_for(kind, stats, layer)` joins the clauses relevant to an
alert kind; when nothing specific was measured it falls back to the kind's
usual causes. Pure functions: no I/O, no TensorFlow.
"""

import math

# Inputs whose batch min/max fall outside [-INPUT_LIMIT, INPUT_LIMIT] are
# called "unscaled". Standardized data rarely exceeds |x| = 5 in a batch
# (a z-score of 5 is a 1-in-3-million value); raw pixels reach 255.
INPUT_LIMIT = 5.0
# A learning rate above this is called high (UMLAUT's rule of thumb: 0.01);
# below LOW_LEARNING_RATE it is called very low (UMLAUT: 1e-7; we say 1e-6).
HIGH_LEARNING_RATE = 1e-2
LOW_LEARNING_RATE = 1e-6
# Update-to-weight ratio ||dW||/||W|| per step: ~1e-3 is typical (CS231n);
# above 1e-1 every step rewrites a tenth of the weights.
HIGH_UPDATE_RATIO = 1e-1
TYPICAL_UPDATE_RATIO = 1e-3
# Two orders of magnitude below typical: the learning rate is too low (a
# converged run's tail keeps ~1e-5 from gradient noise, but its loss has
# come down from where it started; see StalledDetector).
LOW_UPDATE_RATIO = 1e-5
# Fractions of a layer's units that make it worth naming in a hint.
DEAD_HINT_FRAC = 0.5
SATURATED_HINT_FRAC = 0.5

BOUNDED = ("sigmoid", "tanh", "softmax", "hard_sigmoid", "hard_tanh", "hard_silu")


def _num(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _column(stats, stat):
    if stat not in stats.layer_stats:
        return [None] * len(stats.layers)
    return [_num(v) for v in stats.column(stat)]


def input_range(stats):
    """Clause about inputs outside [-INPUT_LIMIT, INPUT_LIMIT], or None."""
    lo = _num(stats.global_values.get("input_min"))
    hi = _num(stats.global_values.get("input_max"))
    if lo is None or hi is None:
        return None
    if max(abs(lo), abs(hi)) <= INPUT_LIMIT:
        return None
    advice = "divide by 255" if 0 <= lo and 100 < hi <= 256 else "standardize them"
    return (
        "inputs range %s..%s: scale them to about [-1, 1] (%s, or add a "
        "Normalization/Rescaling layer)" % (_fmt(lo), _fmt(hi), advice)
    )


def nonfinite_inputs(stats):
    n = _num(stats.global_values.get("input_nonfinite"))
    if n is not None and n >= 1:
        return (
            "the input batch holds %d NaN/Inf values: clean the data "
            "(e.g. np.nan_to_num, drop or impute missing values)" % n
        )
    return None


def nonfinite_loss_only(stats):
    """Clause for a NaN/Inf loss while the inputs and activations are finite."""
    loss = stats.global_values.get("loss")
    try:
        loss_bad = not math.isfinite(float(loss))
    except (TypeError, ValueError):
        return None
    if not loss_bad:
        return None
    n_inputs = _num(stats.global_values.get("input_nonfinite"))
    acts = [v for v in _column(stats, "act_nonfinite") if v is not None]
    if (n_inputs or 0) >= 1 or any(v >= 1 for v in acts):
        return None
    return (
        "the loss is %s while inputs and activations are finite: check the targets "
        "(labels) for NaN/Inf, and the loss for log(0) (e.g. probabilities given to a "
        "from_logits loss)" % float(loss)
    )


def learning_rate(stats, kind):
    """Clause about the learning rate, phrased for the alert kind, or None."""
    lr = _num(stats.global_values.get("learning_rate"))
    if lr is None:
        return None
    if lr == 0:
        return "the learning rate is 0: nothing can change; set a positive learning rate"
    if kind in ("stalled", "vanishing_gradients") and lr < LOW_LEARNING_RATE:
        return "learning rate %s is very low: try 1e-3 (Adam) or 1e-2 (SGD)" % _fmt(lr)
    if kind in ("exploding_gradients", "oscillating_loss", "nan_inf", "dead_units", "stalled"):
        if lr > HIGH_LEARNING_RATE:
            return "learning rate %s is high: try 10x lower" % _fmt(lr)
    return None


def median_update_ratio(stats):
    """Median over the layers with weights of ||dW||/||W|| at this step
    (layers with an exactly zero gradient left out), or None."""
    grads = _column(stats, "grad_norm")
    ratios = sorted(r for r, g, info in zip(_column(stats, "update_ratio"), grads, stats.layers)
                    if info.has_weights and r is not None and r > 0 and g != 0)
    if not ratios:
        return None
    n = len(ratios)
    return ratios[n // 2] if n % 2 else 0.5 * (ratios[n // 2 - 1] + ratios[n // 2])


def low_update_ratio(stats):
    """Clause for weights that move orders of magnitude less than usual:
    the learning rate is too low, by about the same factor (an update is
    proportional to the learning rate, under SGD and Adam alike)."""
    ratio = median_update_ratio(stats)
    if ratio is None or ratio >= LOW_UPDATE_RATIO:
        return None
    factor = TYPICAL_UPDATE_RATIO / ratio
    lr = _num(stats.global_values.get("learning_rate"))
    rate = " (%s)" % _fmt(lr) if lr else ""
    target = " (about %s)" % _fmt(lr * factor) if lr else ""
    return (
        "weights move by %.1e of their norm per step, where ~1e-3 is typical: the learning "
        "rate%s looks roughly %s too low; raise it%s" % (ratio, rate, _orders(factor), target)
    )


def high_update_ratio(stats):
    ratios = [r for r in _column(stats, "update_ratio") if r is not None]
    if ratios and max(ratios) > HIGH_UPDATE_RATIO:
        return (
            "a step changes weights by up to %s of their norm (typical: 1e-3): "
            "lower the learning rate or clip gradients (clipnorm=1.0)" % _pct(max(ratios))
        )
    return None


def dead_layers(stats):
    """Clause naming ReLU-family layers with most units dead, or None.
    Layers fed by frozen weights are left out: the fixes named here cannot
    change them (their own alerts say what can)."""
    names = []
    window = _column(stats, "dead_frac_window")
    batch = _column(stats, "dead_frac")
    frozen = frozen_sources(stats)
    for i, info in enumerate(stats.layers):
        if not info.is_relu_family or info.name in frozen:
            continue
        frac = window[i] if window[i] is not None else batch[i]
        if frac is not None and frac >= DEAD_HINT_FRAC:
            names.append("%s of %s" % (_pct(frac), info.name))
    if not names:
        return None
    return (
        "dead ReLU units (%s): lower the learning rate, scale the inputs, use He "
        "initialization, or LeakyReLU" % ", ".join(names[:3])
    )


def saturated_layers(stats):
    names = []
    frozen = frozen_sources(stats)  # left out, as in `dead_layers`
    saturated = _column(stats, "act_saturated_frac")
    for i, info in enumerate(stats.layers):
        frac = saturated[i]
        if info.name in frozen:
            continue
        if info.activation in BOUNDED and frac is not None and frac >= SATURATED_HINT_FRAC:
            names.append("%s of %s (%s)" % (_pct(frac), info.name, info.activation))
    if not names:
        return None
    return (
        "saturated activations (%s): scale the inputs, use a smaller initializer, "
        "or BatchNormalization before the activation" % ", ".join(names[:3])
    )


def single_unit_softmax(stats):
    for info in stats.layers:
        if info.activation == "softmax" and info.units == 1:
            return (
                "%s applies softmax to a single unit, which always outputs 1.0: use "
                "sigmoid for one output (binary crossentropy) or softmax over 2+ units"
                % info.name
            )
    return None


def squashing_stack(stats):
    squash = [info.name for info in stats.layers
              if info.has_weights and info.activation in ("sigmoid", "tanh", "hard_sigmoid")]
    if len(squash) >= 3:
        return (
            "%d stacked sigmoid/tanh layers shrink gradients at every layer: use ReLU "
            "with He initialization, BatchNormalization, or residual connections" % len(squash)
        )
    return None


def large_weights(stats, layer=None):
    norms = _column(stats, "weight_norm")
    worst = None
    for i, info in enumerate(stats.layers):
        if layer is not None and info.name != layer:
            continue
        if norms[i] is not None and norms[i] > 1e3 and (worst is None or norms[i] > worst[1]):
            worst = (info.name, norms[i])
    if worst is None:
        return None
    return (
        "weights of %s have norm %s: check the initializer (a large stddev or "
        "constant) and add gradient clipping (clipnorm=1.0)" % (worst[0], _fmt(worst[1]))
    )


def initializer_suspect(stats, kind, from_start=False):
    """Clause blaming the initialization when inputs and learning rate look fine.

    Pinned or dead units need large pre-activations; with inputs inside
    [-INPUT_LIMIT, INPUT_LIMIT] and a usual learning rate, what remains is
    the scale of the initial weights and biases. With `from_start` (the
    units were so from the first logged step, before updates counted) the
    learning rate is not considered.
    """
    lo = _num(stats.global_values.get("input_min"))
    hi = _num(stats.global_values.get("input_max"))
    lr = _num(stats.global_values.get("learning_rate"))
    if lo is None or hi is None or max(abs(lo), abs(hi)) > INPUT_LIMIT:
        return None
    if not from_start and lr is not None and not (LOW_LEARNING_RATE <= lr <= HIGH_LEARNING_RATE):
        return None
    if from_start:
        return (
            "inputs are scaled (%s..%s) and the units were already dead at the first step, "
            "before any update: the %s; check the initializers (a negative constant "
            "bias_initializer, a large kernel stddev); the defaults (glorot_uniform, zeros) "
            "are safe" % (_fmt(lo), _fmt(hi), "pre-activations start below zero for every example"))
    what = {
        "saturation": "pre-activations are too large for a bounded activation",
        "dead_units": "pre-activations are below zero for every example",
    }[kind]
    return (
        "inputs are scaled (%s..%s) and the learning rate is usual, so the %s: check "
        "the initializers (kernel stddev, a constant bias_initializer); the defaults "
        "(glorot_uniform, zeros) are safe" % (_fmt(lo), _fmt(hi), what)
    )


def frozen_sources(stats):
    """{layer name: the frozen layer whose weights make its output}: a frozen
    layer maps to itself, a layer without weights (an activation layer) to
    the closest layer before it that holds weights, when that one is frozen
    (the ReLU after a frozen convolution)."""
    out, last = {}, None
    for info in stats.layers:
        if info.frozen or info.has_weights:
            last = info.name if info.frozen else None
        if last is not None:
            out[info.name] = last
    return out


def frozen_source(stats, layer):
    """`frozen_sources(stats)`'s entry for `layer`, or None."""
    return frozen_sources(stats).get(layer)


def frozen_units(stats, kind, layer, alive_at=None):
    """Clause for dead or pinned units whose weights are frozen, or None.

    A frozen layer's weights do not change: its units are dead (or
    saturated) because of the weights it was given and the inputs it gets,
    not because of updates, so the learning rate and the initializers are
    not the cause."""
    source = frozen_source(stats, layer)
    if source is None:
        return None
    what = ("%s is frozen (its weights are not trained)" % layer if source == layer else
            "%s follows the frozen layer %s (whose weights are not trained)" % (layer, source))
    state = {"dead_units": "output 0 for every example",
             "saturation": "sit at the activation's bounds"}[kind]
    if alive_at is not None:
        return (
            "%s, so its units %s because their input changed: the trainable layers before it "
            "moved it; lower their learning rate or clip gradients (clipnorm=1.0)" % (what, state))
    return (
        "%s: its units %s with the weights it was given, on these inputs; check that the "
        "inputs are preprocessed as the frozen layers expect (a pretrained model's own "
        "preprocessing) and that their weights were loaded, or fine-tune them (trainable "
        "again, with a low learning rate)" % (what, state))


def died_during_training(alive_at):
    """Clause for ReLU units that were alive at an earlier step (step, dead fraction)."""
    step, frac = alive_at
    dead = "none" if frac == 0 else "under 1%" if frac < 0.01 else "only " + _pct(frac)
    return (
        "%s of its units were dead at step %d, so they died during training: "
        "large updates pushed their pre-activations below zero for every input; lower "
        "the learning rate (or warm it up), clip gradients (clipnorm=1.0), or use "
        "LeakyReLU" % (dead, step)
    )


def overfitting(best_epoch, best_val, epoch, val, patience):
    """Clause for a validation loss that rose from its best epoch while the
    training loss fell: where the best model was, and what to do."""
    return (
        "the validation loss was lowest at epoch %d (%s) and is %s at epoch %d: the model "
        "learns the training examples by heart. Keep the epoch-%d model (keras.callbacks."
        "EarlyStopping(monitor='val_loss', patience=%d, restore_best_weights=True), or a "
        "checkpoint of the best val_loss), add regularisation (dropout, weight decay, data "
        "augmentation), use more training data or a smaller model"
        % (best_epoch, _fmt(best_val), _fmt(val), epoch, best_epoch, patience)
    )


def hint_for(kind, stats, layer=None, alive_at=None):
    """The hint for an alert of `kind` raised at `stats` (about `layer`).

    Args:
        kind: one of `records.KINDS`.
        stats: the `records.StepStats` of the step at which the alert is raised.
        layer: the alert's layer name, or None.
        alive_at: for `dead_units`, (step, dead fraction) of an earlier step
            at which the layer was mostly alive, or None.

    Returns:
        A short string: measured causes first, then the usual fix.
    """
    clauses = []

    def add(clause):
        if clause and clause not in clauses:
            clauses.append(clause)

    if kind == "stalled":
        slow = low_update_ratio(stats)
        add(slow if slow else learning_rate(stats, kind))
        add(input_range(stats))
        add(dead_layers(stats))
        add(single_unit_softmax(stats))
        add(saturated_layers(stats))
        fallback = ("check the learning rate, that layers are trainable, and the "
                    "output activation against the loss")
    elif kind in ("dead_units", "saturation") and frozen_source(stats, layer) is not None:
        # Frozen weights: neither the updates nor the initializers are the
        # cause; the weights the layer was given and its inputs are.
        add(frozen_units(stats, kind, layer, alive_at))
        add(input_range(stats))
        fallback = None
    elif kind == "dead_units":
        if alive_at is not None:  # they died during training: the updates
            add(learning_rate(stats, kind))
            add(input_range(stats))
            add(large_weights(stats, layer))
            add(died_during_training(alive_at))
        else:
            # Dead since the first logged step, before any update counted:
            # the learning rate is not the cause; the initializers and biases
            # come first, then the input scale.
            add(input_range(stats))
            add(large_weights(stats, layer))
            add(initializer_suspect(stats, kind, from_start=True))
        fallback = ("lower the learning rate, use He initialization, LeakyReLU, "
                    "or BatchNormalization before the ReLU")
    elif kind == "vanishing_gradients":
        add(squashing_stack(stats))
        add(saturated_layers(stats))
        add(input_range(stats))
        fallback = ("use ReLU-family activations with He initialization, "
                    "BatchNormalization, or residual connections")
    elif kind == "exploding_gradients":
        add(learning_rate(stats, kind))
        add(large_weights(stats))
        add(input_range(stats))
        add(high_update_ratio(stats))
        fallback = "clip gradients (clipnorm=1.0), lower the learning rate, check the initializer"
    elif kind == "nan_inf":
        add(nonfinite_inputs(stats))
        add(nonfinite_loss_only(stats))
        add(learning_rate(stats, kind))
        add(large_weights(stats))
        add(input_range(stats))
        fallback = ("look for log(0) or division by zero in custom losses, clip gradients "
                    "(clipnorm=1.0), or use tf.debugging.enable_check_numerics")
    elif kind == "saturation":
        add(single_unit_softmax(stats))
        add(input_range(stats))
        add(large_weights(stats, layer))
        add(learning_rate(stats, kind))
        if not clauses:
            add(initializer_suspect(stats, kind))
        fallback = ("scale the inputs, use a smaller initializer, BatchNormalization, "
                    "and check the output activation matches the loss")
    elif kind == "oscillating_loss":
        add(learning_rate(stats, kind))
        add(high_update_ratio(stats))
        add(input_range(stats))
        fallback = "lower the learning rate (try 10x lower) or use a learning-rate schedule"
    elif kind == "constant_output":
        add(input_range(stats))
        add(single_unit_softmax(stats))
        add(dead_layers(stats))
        add(saturated_layers(stats))
        fallback = ("check that the loss matches the output activation and the label "
                    "encoding (softmax + categorical_crossentropy on one-hot labels, sigmoid + "
                    "binary_crossentropy on 0/1 labels, from_logits=True on a linear output), "
                    "that the output activation can express the targets (no ReLU or sigmoid "
                    "for negative or large regression targets), and that the inputs are scaled")
    elif kind == "overfitting":
        fallback = ("the model fits the training data but no longer generalises: add "
                    "regularisation (dropout, weight decay), augment or add data, or stop "
                    "earlier (keras.callbacks.EarlyStopping(restore_best_weights=True))")
    else:
        raise ValueError("unknown alert kind %r" % (kind,))
    if not clauses:
        return fallback
    return "; ".join(clauses)


def _fmt(x):
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return "%.1e" % x
    return "%.4g" % x


def _orders(factor):
    """A factor as a round figure: "10x", "300x", "1e5x"."""
    exponent = int(math.floor(math.log10(factor)))
    mantissa = int(round(factor / 10 ** exponent))
    if mantissa == 10:
        mantissa, exponent = 1, exponent + 1
    if exponent < 3:
        return "%dx" % (mantissa * 10 ** exponent)
    return "%de%dx" % (mantissa, exponent)


def _pct(frac):
    if frac >= 10:
        return "%.3gx" % frac
    return "%d%%" % round(100 * frac) if frac >= 0.01 else "%.1e" % frac


def data_order():
    """Hint for a loss that rises and falls with the order of the batches."""
    return ("consecutive batches seem to hold the same class or kind of example: shuffle the "
            "training data every epoch (fit(..., shuffle=True) on arrays, "
            "Dataset.shuffle(buffer_size >= the dataset's size) before batch(), "
            "DataLoader(..., shuffle=True))")
