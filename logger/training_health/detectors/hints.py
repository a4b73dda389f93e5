"""Hints: likely causes and fixes, drawn from what was measured.

Every function here reads one `records.StepStats` (the step at which an alert
is raised, and for the `start_*` ones the run's first logged step) and
returns a short clause naming the measured numbers and what to do, or None.
`hint_for(kind, stats, layer, first=...)` checks the causes of an alert kind
in one order against the run's own numbers:

1. the initializers and biases, from the first logged step when it is step 0
   (the initial weights, before any update);
2. the input data: non-finite values, then the scale;
3. the learning rate and the update ratio;
4. the loss against the output activation.

One cause whose evidence holds is the hint; several are listed in that
order, saying that more than one fits; with none, the hint says so and
lists the kind's usual causes in that order. Facts seen at the alert's step
that are symptoms rather than causes (dead or saturated layers) follow as
"seen: ...". Pure functions: no I/O, no TensorFlow.
"""

import math

from training_health.detectors.base import output_rows

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
# No optimizer trains at a learning rate above ~1 (SGD on scaled data uses up
# to ~0.1-1, Adam ~1e-3): when weights move too little and the rate that
# would give typical updates is above this, the gradients are what is tiny.
MAX_USUAL_LEARNING_RATE = 1.0
# At step 0 a variance-preserving initializer (He for ReLU, Glorot otherwise)
# keeps every layer's output std within a small factor of its input's (He
# keeps it, Glorot halves it per ReLU layer). An unbounded layer whose output
# std is this many times the input's (or 1, for tiny inputs) has initial
# weights that amplify the signal: e.g. 3.3x per layer over 10 layers.
INITIAL_GAIN = 100.0
# Each sigmoid/tanh layer scales the spread of its input across examples by
# its slope (at most 0.25 for sigmoid) times the weights' gain: a spread that
# falls this many times through a stack at step 0 leaves an output that does
# not depend on the input.
WASHOUT = 100.0
SQUASHING = ("sigmoid", "tanh", "hard_sigmoid")

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
    if kind in ("exploding_gradients", "oscillating_loss", "nan_inf", "dead_units"):
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
    proportional to the learning rate, under SGD and Adam alike). Not when
    the rate that factor asks for is above MAX_USUAL_LEARNING_RATE: then
    the gradients are tiny (`tiny_gradients`)."""
    ratio = median_update_ratio(stats)
    if ratio is None or ratio >= LOW_UPDATE_RATIO:
        return None
    factor = TYPICAL_UPDATE_RATIO / ratio
    lr = _num(stats.global_values.get("learning_rate"))
    if lr and lr * factor > MAX_USUAL_LEARNING_RATE:
        return None
    rate = " (%s)" % _fmt(lr) if lr else ""
    target = " (about %s)" % _fmt(lr * factor) if lr else ""
    return (
        "weights move by %.1e of their norm per step, where ~1e-3 is typical: the learning "
        "rate%s looks roughly %s too low; raise it%s" % (ratio, rate, _orders(factor), target)
    )


def tiny_gradients(stats):
    """Fact for weights that barely move at a learning rate that is not low:
    the gradients are orders of magnitude too small, so raising the rate is
    not the fix (their cause is upstream: vanishing signal, dead units)."""
    ratio = median_update_ratio(stats)
    lr = _num(stats.global_values.get("learning_rate"))
    if ratio is None or ratio >= LOW_UPDATE_RATIO or not lr:
        return None
    if lr * TYPICAL_UPDATE_RATIO / ratio <= MAX_USUAL_LEARNING_RATE:
        return None
    return ("weights move by %.1e of their norm per step at learning rate %s: the gradients "
            "are tiny, not the rate" % (ratio, _fmt(lr)))


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
    return "dead ReLU units (%s)" % ", ".join(names[:3])


def saturated_layers(stats):
    names = []
    frozen = frozen_sources(stats)  # left out, as in `dead_layers`
    saturated = _column(stats, "act_saturated_frac")
    for i in _hidden_rows(stats):  # a confident classifier's outputs are saturated
        info = stats.layers[i]
        frac = saturated[i]
        if info.name in frozen:
            continue
        if info.activation in BOUNDED and frac is not None and frac >= SATURATED_HINT_FRAC:
            names.append("%s of %s (%s)" % (_pct(frac), info.name, info.activation))
    if not names:
        return None
    return "saturated activations (%s)" % ", ".join(names[:3])


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


def _initial(first):
    """`first` when it is step 0, whose numbers are those of the initial
    weights (the forward pass and gradient before any update), else None:
    a run resumed at a later step tells nothing about its initializers."""
    return first if first is not None and first.step == 0 else None


def _scaled_inputs(stats):
    """(lo, hi) of the inputs when within [-INPUT_LIMIT, INPUT_LIMIT], else None."""
    lo = _num(stats.global_values.get("input_min"))
    hi = _num(stats.global_values.get("input_max"))
    if lo is None or hi is None or max(abs(lo), abs(hi)) > INPUT_LIMIT:
        return None
    return lo, hi


def _hidden_rows(stats):
    """Indices of layers that are not model outputs (nor single-unit heads)."""
    outputs = set(output_rows(stats))
    return [i for i, info in enumerate(stats.layers) if i not in outputs and info.units != 1]


def start_gain(first):
    """Clause for initial weights that amplify the signal: at step 0 an
    unbounded layer's output std is INITIAL_GAIN times the input's (or 1)."""
    first = _initial(first)
    if first is None:
        return None
    std = _num(first.global_values.get("input_std"))
    ref = max(std, 1.0) if std is not None else 1.0
    stds = _column(first, "act_std")
    depth, worst = 0, None
    for i, info in enumerate(first.layers):
        depth += bool(info.has_weights)
        if info.bounds is not None or info.activation in BOUNDED or stds[i] is None:
            continue
        if stds[i] >= INITIAL_GAIN * ref and (worst is None or stds[i] > worst[1]):
            worst = (info.name, stds[i], max(depth, 1))
    if worst is None:
        return None
    name, value, depth = worst
    per_layer = " (%.1fx per layer)" % (value / ref) ** (1.0 / depth) if depth > 1 else ""
    return ("at step 0, before any update, activations reach std %s in %s from inputs of std "
            "%s%s: the kernel initializer is too large; use He (ReLU) or Glorot"
            % (_fmt(value), name, _fmt(std) if std is not None else "?", per_layer))


def start_washout(first):
    """Clause for a stack of 3+ sigmoid/tanh layers across which the spread of
    the activations over the examples falls WASHOUT times at step 0."""
    first = _initial(first)
    if first is None:
        return None
    spread = _column(first, "act_example_std")
    stack = [(info.name, spread[i]) for i, info in enumerate(first.layers)
             if info.has_weights and info.activation in SQUASHING and spread[i] is not None]
    if len(stack) < 3 or stack[-1][1] * WASHOUT > stack[0][1]:
        return None
    return ("at step 0 the spread across examples falls from %s in %s to %s in %s through %d "
            "stacked sigmoid/tanh layers: the output ignores the input; use ReLU with He "
            "initialization, BatchNormalization, or residual connections"
            % (_fmt(stack[0][1]), stack[0][0], _fmt(stack[-1][1]), stack[-1][0], len(stack)))


def start_dead(first, layer=None):
    """Clause for ReLU units dead in the batch of step 0 (before any update)
    while the inputs are scaled: the initial biases or kernel put the
    pre-activations below zero. With unscaled inputs, `input_range` speaks."""
    first = _initial(first)
    scaled = _scaled_inputs(first) if first is not None else None
    if scaled is None:
        return None
    dead = _column(first, "dead_frac")
    for i, info in enumerate(first.layers):
        if layer is not None and info.name != layer:
            continue
        if info.is_relu_family and dead[i] is not None and dead[i] >= DEAD_HINT_FRAC:
            return ("%s of %s's units were dead at step 0, before any update, with inputs scaled "
                    "(%s..%s): check the initializers (a negative constant bias, a large kernel "
                    "stddev)" % (_pct(dead[i]), info.name, _fmt(scaled[0]), _fmt(scaled[1])))
    return None


def start_saturated(first, layer=None):
    """Clause for hidden sigmoid/tanh units pinned at their bounds at step 0
    while the inputs are scaled: the initial weights are too large."""
    first = _initial(first)
    scaled = _scaled_inputs(first) if first is not None else None
    if scaled is None:
        return None
    frac = _column(first, "act_saturated_frac")
    for i in _hidden_rows(first):
        info = first.layers[i]
        if layer is not None and info.name != layer:
            continue
        if info.activation in SQUASHING and frac[i] is not None and frac[i] >= SATURATED_HINT_FRAC:
            return ("%s of %s's outputs (%s) were at its bounds at step 0, before any update, "
                    "with inputs scaled (%s..%s): the kernel initializer is too large"
                    % (_pct(frac[i]), info.name, info.activation, _fmt(scaled[0]),
                       _fmt(scaled[1])))
    return None


def saturated_by_updates(stats, first, layer):
    """Clause for a hidden layer pinned now that was not at step 0: the
    updates drove it there, not the initialization."""
    first = _initial(first)
    if first is None or layer is None:
        return None
    hidden = {first.layers[i].name: i for i in _hidden_rows(first)
              if first.layers[i].activation in SQUASHING}
    rows = [info.name for info in stats.layers]
    if layer not in hidden or layer not in rows:
        return None
    before = _column(first, "act_saturated_frac")[hidden[layer]]
    now = _column(stats, "act_saturated_frac")[rows.index(layer)]
    if before is None or now is None or before >= SATURATED_HINT_FRAC or now < SATURATED_HINT_FRAC:
        return None
    return ("%s was %s saturated at step 0 and %s now: updates drove it there; lower the "
            "learning rate or add BatchNormalization before the activation"
            % (layer, "under 1%" if before < 0.01 else _pct(before), _pct(now)))


def high_rate_blew_up(stats, first):
    """Clause for a learning rate above HIGH_LEARNING_RATE whose updates blew
    a layer's weights up 10x or more since step 0 (the evidence that the
    rate did the damage a later alert reports)."""
    lr = _num(stats.global_values.get("learning_rate"))
    first = _initial(first)
    if lr is None or lr <= HIGH_LEARNING_RATE or first is None:
        return None
    before = dict(zip([info.name for info in first.layers], _column(first, "weight_norm")))
    worst = None
    for info, now in zip(stats.layers, _column(stats, "weight_norm")):
        was = before.get(info.name)
        if was and now is not None and now >= 10 * was and (worst is None or now / was > worst[3]):
            worst = (info.name, was, now, now / was)
    if worst is None:
        return None
    return ("learning rate %s is high: the weights of %s grew from norm %s at step 0 to %s; "
            "try 10x lower" % (_fmt(lr), worst[0], _fmt(worst[1]), _fmt(worst[2])))


def start_large_weights(first, layer=None):
    """Clause for a layer whose weights already had norm > 1e3 at step 0."""
    first = _initial(first)
    if first is None:
        return None
    clause = large_weights(first, layer)
    return clause.replace(" have norm ", " had norm ", 1).replace(
        ": check", " at step 0: check", 1) if clause else None


def nonfinite_inputs_unsampled(stats):
    """Clause for NaN/Inf gradients only in the first layer with weights while
    the loss, the activations and the inputs' counts are finite.

    The first layer's kernel gradient is x^T dL/dz: a NaN/Inf in an input
    example makes it non-finite with every other gradient finite, while
    the input and activation statistics, taken on a few examples of the
    batch, can miss that example. NaN weights or an overflow would make
    later layers or the loss non-finite too.
    """
    loss = _num(stats.global_values.get("loss"))
    if loss is None or (_num(stats.global_values.get("input_nonfinite")) or 0) >= 1:
        return None
    grads = _column(stats, "grad_nonfinite")
    acts = _column(stats, "act_nonfinite")
    weighted = [i for i, info in enumerate(stats.layers) if info.has_weights]
    bad = [i for i in weighted if (grads[i] or 0) >= 1]
    if bad != weighted[:1] or any((a or 0) >= 1 for a in acts):
        return None
    return ("NaN/Inf gradients (%d) only in %s, the first layer, with the loss and activations "
            "finite: the input batch holds NaN/Inf values (input statistics sample a few "
            "examples); clean the data" % (grads[bad[0]], stats.layers[bad[0]].name))


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
        "%s of its units were dead at step %d, so they died during training: large "
        "updates pushed them below zero; lower the learning rate (or warm it up), clip "
        "gradients (clipnorm=1.0), or use LeakyReLU" % (dead, step)
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


def hint_for(kind, stats, layer=None, alive_at=None, first=None):
    """The hint for an alert of `kind` raised at `stats` (about `layer`).

    Args:
        kind: one of `records.KINDS`.
        stats: the `records.StepStats` of the step at which the alert is raised.
        layer: the alert's layer name, or None.
        alive_at: for `dead_units`, (step, dead fraction) of an earlier step
            at which the layer was mostly alive, or None.
        first: the `records.StepStats` of the run's first logged step (a
            detector's `first_stats`), or None. At step 0 its numbers are
            those of the initial weights, the first evidence checked.

    Returns:
        A short string: the causes whose evidence holds, in the order
        checked (initializers at step 0, inputs, learning rate and update
        ratio, loss against output activation), with the numbers that led
        to them; or, when none holds, the kind's usual causes in that order.
    """
    clauses = []
    facts = []  # symptoms seen at the alert's step, listed after the causes

    def add(clause):
        if clause and clause not in clauses:
            clauses.append(clause)

    def note(fact):
        if fact and fact not in facts:
            facts.append(fact)

    def add_initializers(layer=None):
        add(start_gain(first))
        add(start_washout(first))
        add(start_dead(first, layer))
        add(start_saturated(first, layer))
        add(start_large_weights(first, layer))

    if kind == "stalled":
        add_initializers()
        add(nonfinite_inputs(stats))
        add(input_range(stats))
        slow = low_update_ratio(stats)
        add(slow if slow else learning_rate(stats, kind))
        add(high_rate_blew_up(stats, first))
        add(single_unit_softmax(stats))
        note(dead_layers(stats))
        note(saturated_layers(stats))
        if not clauses:
            note(tiny_gradients(stats))
        fallback = ("the initializers, the input scale, the learning rate, the output "
                    "activation against the loss, and that layers are trainable")
    elif kind in ("dead_units", "saturation") and frozen_source(stats, layer) is not None:
        # Frozen weights: neither the updates nor the initializers are the
        # cause; the weights the layer was given and its inputs are.
        add(frozen_units(stats, kind, layer, alive_at))
        add(input_range(stats))
        fallback = None
    elif kind == "dead_units":
        if alive_at is not None:  # they died during training: the updates
            add(start_gain(first))
            add(input_range(stats))
            add(learning_rate(stats, kind))
            add(large_weights(stats, layer) if first is None else start_large_weights(first, layer))
            died = died_during_training(alive_at)
            if clauses:
                note(died.split(": ")[0])
            else:
                add(died)
        else:
            # Dead since the first logged step, before any update counted:
            # the learning rate is not the cause; the initializers and biases
            # come first, then the input scale.
            add(start_dead(first, layer))
            add(input_range(stats))
            add(large_weights(stats, layer) if first is None else start_large_weights(first, layer))
            if not clauses:
                add(initializer_suspect(stats, kind, from_start=True))
        fallback = ("the initializers (He, zero biases), the input scale, the learning rate "
                    "(lower it), or LeakyReLU / BatchNormalization before the ReLU")
    elif kind == "vanishing_gradients":
        add(start_washout(first) or squashing_stack(stats))
        add(start_saturated(first))
        add(input_range(stats))
        note(saturated_layers(stats))
        fallback = ("the initializers, the input scale, then ReLU-family activations with He "
                    "initialization, BatchNormalization, or residual connections")
    elif kind == "exploding_gradients":
        add(start_gain(first))
        add(large_weights(stats) if first is None else start_large_weights(first))
        add(input_range(stats))
        add(learning_rate(stats, kind))
        if not clauses:  # the size of the updates, when nothing above explains it
            add(high_update_ratio(stats))
        fallback = ("the initializer's scale, the input scale, the learning rate (lower it), "
                    "and clip gradients (clipnorm=1.0)")
    elif kind == "nan_inf":
        add(start_gain(first))
        add(large_weights(stats) if first is None else start_large_weights(first))
        add(nonfinite_inputs(stats))
        add(nonfinite_inputs_unsampled(stats))
        add(input_range(stats))
        add(learning_rate(stats, kind))
        add(nonfinite_loss_only(stats))
        fallback = ("the initializers, NaN/Inf in the data, the learning rate (clip gradients, "
                    "clipnorm=1.0), then log(0) or division by zero in custom losses "
                    "(tf.debugging.enable_check_numerics finds the op)")
    elif kind == "saturation":
        add_initializers(layer if layer in [l.name for l in stats.layers
                                            if l.has_weights and l.activation in SQUASHING]
                         else None)
        add(input_range(stats))
        if first is None:
            add(large_weights(stats, layer))
        # the updates, with the learning rate's own evidence when there is some
        add(high_rate_blew_up(stats, first) or saturated_by_updates(stats, first, layer))
        add(single_unit_softmax(stats))
        if not clauses and _initial(first) is None:
            add(initializer_suspect(stats, kind))
        fallback = ("the initializers (a smaller scale), the input scale, BatchNormalization, "
                    "and the output activation against the loss")
    elif kind == "oscillating_loss":
        add(learning_rate(stats, kind))
        add(high_update_ratio(stats))
        add(input_range(stats))
        fallback = "lower the learning rate (try 10x lower) or use a learning-rate schedule"
    elif kind == "constant_output":
        add_initializers()
        add(input_range(stats))
        add(high_rate_blew_up(stats, first))
        add(single_unit_softmax(stats))
        note(dead_layers(stats))
        note(saturated_layers(stats))
        fallback = ("the initializers, the input scale, then the loss against the output "
                    "activation and the labels (softmax + categorical_crossentropy on one-hot, "
                    "sigmoid + binary_crossentropy on 0/1, from_logits=True on a linear "
                    "output) and an output activation that can express the targets")
    elif kind == "overfitting":
        fallback = ("the model fits the training data but no longer generalises: add "
                    "regularisation (dropout, weight decay), augment or add data, or stop "
                    "earlier (keras.callbacks.EarlyStopping(restore_best_weights=True))")
    else:
        raise ValueError("unknown alert kind %r" % (kind,))
    if kind not in CHECKED_IN_ORDER:
        return "; ".join(clauses) if clauses else fallback
    return _ordered(clauses, facts, fallback)


# Kinds whose hint follows the ordered checks above (`_ordered`).
CHECKED_IN_ORDER = ("stalled", "dead_units", "vanishing_gradients", "exploding_gradients",
                    "nan_inf", "saturation", "constant_output")


def _ordered(causes, facts, candidates):
    """One cause as is; several, numbered in the order checked; none: says so
    and lists the kind's usual `candidates`. Facts follow as "seen: ..."."""
    seen = "; ".join(facts)
    if not causes:
        return (seen + "; " if seen else "") + "no measured cause singles one out; in order: " \
            + candidates
    if len(causes) == 1:
        text = causes[0]
    else:
        text = "%d causes fit, in the order checked: %s" % (
            len(causes), " ".join("(%d) %s;" % (i + 1, c) for i, c in enumerate(causes))[:-1])
    return text + ("; seen: " + seen if seen else "")


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
