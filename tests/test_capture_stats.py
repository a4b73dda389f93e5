"""Every logged statistic against a brute-force numpy reference on the same batch."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from training_health import format as fmt  # noqa: E402
from training_health import statistics as stats  # noqa: E402
from training_health.keras import HealthCallback  # noqa: E402

from thtest_events import layer_table, read_run  # noqa: E402

pytestmark = pytest.mark.compat

BATCH = 16
LAYERS = ("hidden", "sig", "out")


def make_model(jit_compile=False):
    keras.utils.set_random_seed(1)
    inp = keras.Input((6,), name="x")
    h = keras.layers.Dense(5, activation="relu", name="hidden")(inp)
    s = keras.layers.Dense(4, activation="sigmoid", name="sig")(h)
    out = keras.layers.Dense(3, activation="softmax", name="out")(s)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.SGD(0.5), "categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=jit_compile)
    hidden = model.get_layer("hidden")
    kernel, bias = hidden.get_weights()
    kernel[:, 0] = 0.01  # unit 0 never fires: a dead unit
    bias[0] = -100.0
    hidden.set_weights([kernel, bias])
    sig = model.get_layer("sig")
    k, b = sig.get_weights()
    sig.set_weights([k * 8.0, b])  # push some sigmoid outputs to their bounds
    return model


def batches(n, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.normal(size=(BATCH, 6)).astype("float32") * 3.0
        y = keras.utils.to_categorical(rng.integers(0, 3, BATCH), 3).astype("float32")
        yield x, y


def reference_step(model, x, y):
    """Activations, loss, gradients and weights before the step, computed directly."""
    probe = keras.Model(model.input, [model.get_layer(n).output for n in LAYERS])
    with tf.GradientTape() as tape:
        acts = probe(x, training=True)
        loss = keras.losses.CategoricalCrossentropy()(y, acts[-1])
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    by_layer = {}
    for v, g in zip(variables, grads):
        by_layer.setdefault(v.path.split("/")[0], []).append(np.asarray(g))
    before = {n: [np.array(w) for w in model.get_layer(n).get_weights()] for n in LAYERS}
    return [np.asarray(a) for a in acts], float(loss), by_layer, before


def run_steps(tmp_path, n_steps, jit_compile=False, **kwargs):
    model = make_model(jit_compile)
    cb = HealthCallback(str(tmp_path), flush_every=1, histogram_every=1, detectors=None, **kwargs)
    refs = []
    for x, y in batches(n_steps):
        acts, loss, grads, before = reference_step(model, x, y)
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
        after = {n: model.get_layer(n).get_weights() for n in LAYERS}
        refs.append(dict(x=x, y=y, acts=acts, loss=loss, grads=grads, before=before, after=after))
    cb.close()
    return model, refs


def close(actual, expected, name):
    np.testing.assert_allclose(actual, expected, rtol=2e-4, atol=1e-6, err_msg=name)


def close_row(row, expected, label):
    """Each expected statistic: NaN where the reference is NaN, else close."""
    for key, value in expected.items():
        if np.isnan(value):
            assert np.isnan(row[key]), (label, key, row[key])
        else:
            close(row[key], value, "%s/%s" % (label, key))


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [False, True], ids=["op-by-op", "xla"])
def test_every_statistic_matches_numpy_reference(tmp_path, jit_compile):
    # Under XLA the step computes the masking statistics directly; op by
    # op, the unmasked ones (every entry here is finite).
    model, refs = run_steps(tmp_path, 3, jit_compile, dead_window=2, activation_examples=None)
    assert model.jit_compile is jit_compile
    names, global_names, steps, meta = layer_table(str(tmp_path))
    assert names == list(LAYERS)
    assert sorted(steps) == [0, 1, 2]
    info = {l.name: l for l in meta["layers"]}
    assert info["hidden"].activation == "relu" and info["sig"].bounds == (0.0, 1.0)
    assert info["out"].units == 3 and info["hidden"].has_activation

    for step, ref in enumerate(refs):
        matrix, glob = steps[step]
        close(glob["loss"], ref["loss"], "loss")
        all_grads = [g for n in LAYERS for g in ref["grads"][n]]
        close(glob["grad_norm"], stats.gradient_stats(all_grads)["grad_norm"], "global grad_norm")
        for key, value in stats.input_stats([ref["x"]]).items():
            close(glob[key], value, key)
        close(glob["learning_rate"], 0.5, "learning_rate")
        pred = ref["acts"][-1]
        accuracy = np.mean(np.argmax(pred, 1) == np.argmax(ref["y"], 1))
        close(glob["accuracy"], accuracy, "per-batch accuracy")

        for i, name in enumerate(LAYERS):
            row = dict(zip(fmt.LAYER_STATS, matrix[i]))
            expected = {}
            expected.update(stats.gradient_stats(ref["grads"][name]))
            expected.update(stats.weight_stats(ref["before"][name], ref["after"][name]))
            expected.update(stats.activation_stats(ref["acts"][i], info[name].bounds))
            expected["dead_frac"] = stats.dead_fraction(ref["acts"][i])
            window = [r["acts"][i] for r in refs[max(0, step - 1): step + 1]]
            expected["dead_frac_window"] = stats.dead_fraction_window(window)
            close_row(row, {k: expected[k] for k in fmt.LAYER_STATS}, "%s step %d" % (name, step))

    # The dead unit and the saturated sigmoid are really there, not zeros vs zeros.
    first = dict(zip(fmt.LAYER_STATS, steps[0][0][0]))
    assert first["dead_frac"] > 0.19 and first["dead_frac_window"] > 0.19
    assert dict(zip(fmt.LAYER_STATS, steps[0][0][1]))["act_saturated_frac"] > 0.05
    assert 1e-4 < first["update_ratio"] < 1.0


@pytest.mark.slow
def test_weights_set_between_fits_are_the_next_steps_starting_point(tmp_path):
    # W_before is the weights as the step finds them, also right after the
    # user changed them between two fits.
    model = make_model()
    cb = HealthCallback(str(tmp_path), flush_every=1, histogram_every=0, detectors=None)
    (x0, y0), (x1, y1) = batches(2)
    model.fit(x0, y0, batch_size=BATCH, verbose=0, callbacks=[cb])
    hidden = model.get_layer("hidden")
    changed = [w * 3.0 for w in hidden.get_weights()]
    hidden.set_weights(changed)
    model.fit(x1, y1, batch_size=BATCH, verbose=0, callbacks=[cb])
    after = hidden.get_weights()
    cb.close()
    _, _, steps, _ = layer_table(str(tmp_path))
    row = dict(zip(fmt.LAYER_STATS, steps[1][0][LAYERS.index("hidden")]))
    expected = stats.weight_stats(changed, after)
    close(row["weight_norm"], expected["weight_norm"], "weight_norm after set_weights")
    close(row["update_ratio"], expected["update_ratio"], "update_ratio after set_weights")


@pytest.mark.slow
def test_histograms_match_reference(tmp_path):
    model, refs = run_steps(tmp_path, 1, activation_examples=None)
    hist = read_run(str(tmp_path))[fmt.TAG_HISTOGRAMS]
    step, value, meta = hist[0]
    assert step == 0 and value.shape == (3, 2, fmt.HIST_ROW) and value.dtype == np.float32
    assert meta["layers"] == list(LAYERS) and meta["bins"] == fmt.HIST_BINS
    for i, name in enumerate(LAYERS):
        close(value[i, 0], stats.gradient_histogram(refs[0]["grads"][name]), name + " grad hist")
        close(value[i, 1], stats.activation_histogram(refs[0]["acts"][i]), name + " act hist")
        close(value[i, 1, 2:].sum(), 1.0, "activation fractions sum to 1")


@pytest.mark.slow
def test_activation_sample_uses_leading_examples(tmp_path):
    model, refs = run_steps(tmp_path, 1, activation_examples=4)
    _, _, steps, meta = layer_table(str(tmp_path))
    matrix, glob = steps[0]
    for i, name in enumerate(LAYERS):
        row = dict(zip(fmt.LAYER_STATS, matrix[i]))
        for key, value in stats.activation_stats(refs[0]["acts"][i][:4], meta["layers"][i].bounds).items():
            if not np.isnan(value):
                close(row[key], value, name + "/" + key)
        # hidden (relu + bias): units whose bias got gradient fired somewhere in the batch
        bias_grad = refs[0]["grads"][name][1] if name == "hidden" else None
        close(row["dead_frac"], stats.dead_fraction(refs[0]["acts"][i][:4], bias_grad), name + " dead")
    close(glob["input_mean"], stats.input_stats([refs[0]["x"][:4]])["input_mean"], "input mean")
    # Gradient statistics still cover the whole batch.
    close(matrix[0][0], stats.gradient_stats(refs[0]["grads"]["hidden"])["grad_norm"], "grad norm")


def test_firing_bias_only_where_its_gradient_proves_firing():
    from training_health.capture.keras_layers import firing_bias

    def built(layer, shape):
        layer.build(shape)
        return layer

    dense = built(keras.layers.Dense(4, activation="relu"), (None, 3))
    assert firing_bias(dense) is dense.bias
    conv = built(keras.layers.Conv2D(4, 3, activation="relu6"), (None, 8, 8, 3))
    assert firing_bias(conv) is conv.bias
    conv1d = built(keras.layers.Conv1D(4, 3, activation="relu", padding="causal"), (None, 8, 3))
    assert firing_bias(conv1d) is conv1d.bias

    class Shifted(keras.layers.Dense):  # its own call: the output need not be relu(z + b)
        def call(self, x):
            return super().call(x) + 1.0

    not_used = [
        built(keras.layers.Dense(4, activation="sigmoid"), (None, 3)),
        built(keras.layers.Dense(4, activation="leaky_relu"), (None, 3)),
        built(keras.layers.Dense(4), (None, 3)),
        built(keras.layers.Dense(4, activation="relu", use_bias=False), (None, 3)),
        built(keras.layers.Dense(4, activation="relu", bias_regularizer="l2"), (None, 3)),
        built(keras.layers.Conv2D(4, 3, activation="relu", data_format="channels_first"), (None, 3, 8, 8)),
        built(Shifted(4, activation="relu"), (None, 3)),
        built(keras.layers.ReLU(), (None, 3)),  # no producer known
    ]
    assert [firing_bias(layer) for layer in not_used] == [None] * len(not_used)

    # A ReLU layer behind a linear Dense / a BatchNormalization that feeds
    # only it: that layer's bias / beta.
    inp = keras.Input((8, 8, 3))
    bn = keras.layers.BatchNormalization()
    relu = keras.layers.ReLU()
    x = relu(bn(keras.layers.Conv2D(4, 3, use_bias=False)(inp)))
    lin = keras.layers.Dense(5)
    act = keras.layers.Activation("relu")
    act(lin(keras.layers.Flatten()(x)))
    assert firing_bias(relu) is bn.beta and firing_bias(act) is lin.bias
    # ... but not when the producer's output also goes elsewhere (its bias
    # then gets gradient through the other path), nor behind a relu Dense.
    inp = keras.Input((3,))
    shared, relu, relu2 = keras.layers.Dense(4), keras.layers.ReLU(), keras.layers.ReLU()
    h = shared(inp)
    keras.layers.Add()([relu(h), h])
    relu2(keras.layers.Dense(4, activation="relu")(inp))
    assert firing_bias(relu) is None and firing_bias(relu2) is None


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [False, True], ids=["op-by-op", "xla"])
def test_relu_units_firing_outside_the_sample_are_not_dead(tmp_path, jit_compile):
    # Unit 1 of `hidden` fires only on examples 4.. of the batch, which the
    # activation sample (the first 4) does not see; its bias gradient does.
    model = make_model(jit_compile)
    hidden = model.get_layer("hidden")
    kernel, bias = hidden.get_weights()
    kernel[:, 1] = [1.0, 0, 0, 0, 0, 0]
    bias[1] = -5.0
    hidden.set_weights([kernel, bias])
    (x, y), = batches(1)
    x[:4, 0] = -3.0
    x[4:, 0] = np.linspace(6.0, 9.0, BATCH - 4)
    acts, _, grads, _ = reference_step(model, x, y)
    whole, sampled = stats.dead_fraction(acts[0]), stats.dead_fraction(acts[0][:4])
    assert sampled > whole  # the sample alone would call unit 1 dead
    cb = HealthCallback(str(tmp_path), flush_every=1, histogram_every=0, detectors=None,
                        activation_examples=4, dead_window=1)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    cb.close()
    _, _, steps, _ = layer_table(str(tmp_path))
    row = dict(zip(fmt.LAYER_STATS, steps[0][0][0]))
    close(row["dead_frac"], whole, "dead_frac with the bias gradient")
    close(row["dead_frac"], stats.dead_fraction(acts[0][:4], grads["hidden"][1]), "reference")
    close(row["dead_frac_window"], whole, "dead_frac_window with the bias gradient")
    assert whole > 0.19  # unit 0 (bias -100) never fires and still counts as dead


@pytest.mark.slow
@pytest.mark.parametrize("producer", ["dense", "batchnorm"])
def test_relu_layer_behind_linear_or_batchnorm_uses_its_offset(tmp_path, producer):
    # act = ReLU(Dense(linear)) or ReLU(BatchNormalization(Dense(no bias))):
    # unit 1 fires only on examples 4.. of the batch, outside the sample.
    keras.utils.set_random_seed(2)
    inp = keras.Input((6,))
    if producer == "dense":
        z = keras.layers.Dense(5, name="lin")(inp)
    else:
        z = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(5, use_bias=False, name="lin")(inp))
    act = keras.layers.ReLU(name="act")(z)
    out = keras.layers.Dense(3, activation="softmax", name="out")(act)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
    lin = model.get_layer("lin")
    weights = lin.get_weights()
    weights[0][:, 1] = [1.0, 0, 0, 0, 0, 0]
    if producer == "dense":
        weights[1][1] = -5.0
    lin.set_weights(weights)
    (x, y), = batches(1)
    x[:4, 0] = -3.0
    x[4:, 0] = 8.0
    probe = keras.Model(model.input, model.get_layer("act").output)
    acts = np.asarray(probe(x, training=True))
    whole, sampled = stats.dead_fraction(acts), stats.dead_fraction(acts[:4])
    assert sampled > whole
    cb = HealthCallback(str(tmp_path), flush_every=1, histogram_every=0, detectors=None,
                        activation_examples=4, layers=["act"])
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    cb.close()
    _, _, steps, _ = layer_table(str(tmp_path))
    close(dict(zip(fmt.LAYER_STATS, steps[0][0][0]))["dead_frac"], whole, producer)


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [False, True], ids=["op-by-op", "xla"])
def test_non_finite_values_are_counted_not_raised(tmp_path, jit_compile):
    model = make_model(jit_compile)
    x, y = next(batches(1))
    x[0, 0] = np.nan
    x[1, 2] = np.inf
    weights = WeightsAround("hidden")
    cb = HealthCallback(str(tmp_path), flush_every=1, detectors=None, activation_examples=None)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[cb, weights])
    cb.close()
    _, _, steps, _ = layer_table(str(tmp_path))
    matrix, glob = steps[0]
    assert glob["input_nonfinite"] == 2
    close(glob["input_mean"], np.mean(x[np.isfinite(x)]), "finite input mean")
    hidden = dict(zip(fmt.LAYER_STATS, matrix[0]))
    assert hidden["act_nonfinite"] > 0 and hidden["grad_nonfinite"] > 0
    assert np.isfinite(hidden["grad_norm"])  # norms cover the finite entries
    assert np.isnan(glob["loss"]) and np.sum(~np.isfinite(model.get_layer("hidden").get_weights()[0])) > 0
    assert sorted(steps) == [0, 1]
    # The weights turn non-finite in step 0 and start step 1 so: the norm and
    # the update cover the entries finite before and after the step (NaN
    # where none is: op by op every entry of this layer turns NaN; under XLA
    # some stay finite). test_weight_columns_mask_non_finite_entries checks
    # a partial case in every mode.
    assert np.all(np.isfinite(weights.before[0][0])) and not np.all(np.isfinite(weights.after[0][0]))
    for step in (0, 1):
        row = dict(zip(fmt.LAYER_STATS, steps[step][0][0]))
        expected = stats.weight_stats(weights.before[step], weights.after[step])
        close_row(row, expected, "hidden weights, step %d" % step)


def _weight_case(rng):
    """Three layers' weights before and after a step: some entries of the
    first turn non-finite (one was already), all of the second, none of the third."""
    before = [[rng.normal(size=(4, 5)), rng.normal(size=5)],
              [rng.normal(size=(5, 2)), rng.normal(size=2)],
              [rng.normal(size=(300, 300))]]
    before = [[w.astype("float32") for w in layer] for layer in before]
    after = [[(w + 0.01 * rng.normal(size=w.shape)).astype("float32") for w in layer] for layer in before]
    before[0][0][1, 1] = np.nan
    after[0][0][1, 1] = np.nan
    after[0][0][2, 3] = np.inf
    after[0][1][4] = np.nan
    after[1] = [np.full_like(w, np.nan) for w in after[1]]
    return before, after


@pytest.mark.parametrize("mode", ["eager", "tf.function", "xla"])
def test_weight_columns_mask_non_finite_entries(mode):
    # Op by op (unmasked sums, masked only when one is not finite) and
    # under XLA (masked, layer by layer): the reference's values.
    from training_health.capture import tf_ops as ts

    before, after = _weight_case(np.random.default_rng(5))

    def columns(before, after):
        layers = []
        for bs, as_ in zip(before, after):
            pairs = []
            for b, a in zip(bs, as_):
                (a, scale), b = ts.sample(a), ts.sample(b)[0]
                pairs.append((b, a - b, scale))
            layers.append(pairs)
        return ts.weight_columns(layers)

    if mode != "eager":
        columns = tf.function(columns, jit_compile=mode == "xla")
    got = columns([[tf.constant(w) for w in layer] for layer in before],
                  [[tf.constant(w) for w in layer] for layer in after])
    for i, (b, a) in enumerate(zip(before, after)):
        expected = stats.weight_stats(b, a)
        row = {k: float(got[k][i]) for k in ("weight_norm", "update_ratio")}
        close_row(row, expected, "layer %d" % i)
    assert np.isfinite(float(got["update_ratio"][0])) and np.isnan(float(got["weight_norm"][1]))
    assert float(got["update_ratio"][2]) > 0


def test_fast_activation_columns_match_reference_for_every_kind_of_output():
    # The op-by-op path's activation columns against the reference for an
    # output of static shape, one whose size is known only when running (a
    # sequence of any length), a bounded one and a vector, with an output
    # not captured beside them; a non-finite entry must show in the probe.
    from training_health.capture import tf_ops as ts

    rng = np.random.default_rng(11)
    conv = rng.normal(size=(8, 5, 7)).astype("float32")
    sequence = np.maximum(rng.normal(size=(8, 13, 3)), 0).astype("float32")
    sigmoid = (1 / (1 + np.exp(-3 * rng.normal(size=(8, 4))))).astype("float32")
    vector = rng.normal(size=(8,)).astype("float32")
    bounds = [None, None, None, (0.0, 1.0), None]

    @tf.function(input_signature=[tf.TensorSpec([None, 5, 7]), tf.TensorSpec([None, None, 3]),
                                  tf.TensorSpec([None, 4]), tf.TensorSpec([None])])
    def columns(conv, sequence, sigmoid, vector):
        return ts.fast_activation_columns([conv, None, sequence, sigmoid, vector], bounds)

    got, probe = columns(conv, sequence, sigmoid, vector)
    outputs = [conv, None, sequence, sigmoid, vector]
    for i, (a, b) in enumerate(zip(outputs, bounds)):
        row = {k: float(v[i]) for k, v in got.items()}
        if a is None:
            assert all(np.isnan(v) for v in row.values()), row
            continue
        close_row(row, stats.activation_stats(a, b), "output %d" % i)
    assert np.all(np.isfinite(probe.numpy()))
    sequence[1, 2, 0] = np.nan  # a non-finite entry shows in the probe
    assert not np.all(np.isfinite(columns(conv, sequence, sigmoid, vector)[1].numpy()))


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [False, True], ids=["op-by-op", "xla"])
@pytest.mark.parametrize("case", ["adamw", "sgd-nesterov-every-2", "constraint"])
def test_weight_columns_across_steps_and_optimizers(tmp_path, case, jit_compile):
    # A step's weight columns come from the variables' in-place additions
    # in the step (a kernel constraint's assign: from the weights read at
    # the end). With every batch or every 2nd logged, across epochs, op by
    # op and under XLA, and whatever changes the weights in the step
    # (AdamW's decay, momentum, a constraint), they are the reference's for
    # that step.
    keras.utils.set_random_seed(2)
    inp = keras.Input((6,))
    constraint = keras.constraints.MaxNorm(0.5) if case == "constraint" else None
    h = keras.layers.Dense(5, activation="relu", name="hidden", kernel_constraint=constraint)(inp)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h)
    model = keras.Model(inp, out)
    optimizer = {"adamw": keras.optimizers.AdamW(0.05, weight_decay=0.5),
                 "sgd-nesterov-every-2": keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
                 "constraint": keras.optimizers.SGD(0.1)}[case]
    model.compile(optimizer, "categorical_crossentropy", jit_compile=jit_compile)
    weights = {name: WeightsAround(name) for name in ("hidden", "out")}
    every = 2 if case.endswith("every-2") else 1
    cb = HealthCallback(str(tmp_path), flush_every=1, histogram_every=0, detectors=None,
                        every_n_batches=every)
    (x, y), = batches(1)
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
              callbacks=[cb] + list(weights.values()))
    assert cb._host.collector.last_step == 8 - every  # everything read at the end of fit
    cb.close()
    names, _, steps, _ = layer_table(str(tmp_path))
    assert sorted(steps) == list(range(0, 8, every))
    for step in steps:
        for i, name in enumerate(names):
            row = dict(zip(fmt.LAYER_STATS, steps[step][0][i]))
            expected = stats.weight_stats(weights[name].before[step], weights[name].after[step])
            close_row(row, {k: expected[k] for k in ("weight_norm", "update_ratio")},
                      "%s %s step %d" % (case, name, step))
            assert row["update_ratio"] > 1e-4


def test_each_row_is_complete_when_its_step_ends(tmp_path):
    # The weight columns come with the row (dW from the optimizer's update
    # in the step itself): the host reads a step as soon as it ended, and
    # what it reads is final.
    model = make_model()
    cb = HealthCallback(str(tmp_path), flush_every=1, histogram_every=0, detectors=None)
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            cb._host.collector.collect()  # read what is there now (the callback's own reads run on a thread)
            seen.append((batch, cb._host.collector.last_step))

    (x, y), = batches(1)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[cb, Probe()])
    assert seen == [(0, 0), (1, 1), (2, 2), (3, 3)]
    cb.close()
    names, _, steps, _ = layer_table(str(tmp_path))
    assert sorted(steps) == [0, 1, 2, 3]
    for step in steps:
        for i, name in enumerate(names):
            row = dict(zip(fmt.LAYER_STATS, steps[step][0][i]))
            assert row["weight_norm"] > 0 and row["update_ratio"] > 0, (step, name, row)


class WeightsAround(keras.callbacks.Callback):
    """One layer's weights before and after each training batch."""

    def __init__(self, layer):
        super().__init__()
        self.layer, self.before, self.after = layer, [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.before.append(self.model.get_layer(self.layer).get_weights())

    def on_train_batch_end(self, batch, logs=None):
        self.after.append(self.model.get_layer(self.layer).get_weights())


@pytest.mark.parametrize("shape", [(100,), (128, 128), (2304, 512), (3, 3, 64, 65), (40001,)])
def test_step_sample_is_the_reference_sample(shape):
    # Whole tensors up to the cap; beyond, the same blocks as the reference,
    # whether or not the size is a multiple of the block.
    from training_health.capture import tf_ops as ts

    x = np.random.default_rng(3).normal(size=shape).astype("float32")
    expected, expected_scale = stats.sample(x)
    part, scale = tf.function(ts.sample)(tf.constant(x))
    np.testing.assert_array_equal(part.numpy(), expected)
    assert float(scale) == expected_scale


def test_samples_are_fixed_blocks_and_positions():
    # The reference sample itself: fixed, spread over the tensor, exact below the cap.
    assert stats.sample(np.arange(stats.SAMPLE_ELEMENTS))[1] == 1.0
    n = 2304 * 512
    part, scale = stats.sample(np.arange(n))
    assert part.size == stats.SAMPLE_ELEMENTS and scale == n / stats.SAMPLE_ELEMENTS
    blocks = part.reshape(-1, stats.SAMPLE_BLOCK)
    assert np.all(np.diff(blocks, axis=1) == 1)  # consecutive entries within a block
    starts = blocks[:, 0]
    assert np.all(starts % stats.SAMPLE_BLOCK == 0) and np.all(np.diff(starts) > 0)
    assert starts[0] < n // 10 and starts[-1] > n - n // 10  # spread over the whole tensor
    # Both halves of the 512-wide rows are reached (no stride aliasing with the layout).
    assert set((starts % 512) // 256) == {0, 1}
    assert np.array_equal(stats.sample_block_indices(n), stats.sample_block_indices(n))
    a = np.random.default_rng(0).normal(size=(16, 32, 32, 8))
    kept = stats.activation_sample(a, 8)
    assert kept.shape[0] == 8 and kept.shape[-1] == 8 and kept.size <= stats.SAMPLE_ELEMENTS
    assert stats.activation_sample(a[:, :4, :4], 8).shape == (8, 4, 4, 8)  # small: whole output


@pytest.mark.slow
def test_large_tensors_match_the_sampled_reference(tmp_path):
    """A conv output and a kernel above SAMPLE_ELEMENTS: logged values equal
    the numpy reference on the same sample (and norms stay exact)."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((16, 16, 3))
    conv = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv")(inp)
    flat = keras.layers.Flatten()(conv)
    out = keras.layers.Dense(8, activation="softmax", name="head")(flat)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    kernel, bias = model.get_layer("conv").get_weights()
    bias[:8] = -100.0  # 8 of 64 channels never fire: 1/8 of the head's kernel gets zero gradients
    model.get_layer("conv").set_weights([kernel, bias])
    names = ("conv", "head")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(BATCH, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 8, BATCH)
    assert model.get_layer("head").kernel.shape.num_elements() > stats.SAMPLE_ELEMENTS
    assert 8 * 16 * 16 * 64 > stats.SAMPLE_ELEMENTS

    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    with tf.GradientTape() as tape:
        acts = probe(x, training=True)
        loss = keras.losses.SparseCategoricalCrossentropy()(y, acts[-1])
    grads = dict(zip([v.path for v in model.trainable_variables],
                     tape.gradient(loss, model.trainable_variables)))
    before = {n: [np.array(w) for w in model.get_layer(n).get_weights()] for n in names}
    cb = HealthCallback(str(tmp_path), flush_every=1, histogram_every=1, detectors=None)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    cb.close()
    after = {n: model.get_layer(n).get_weights() for n in names}
    hist = read_run(str(tmp_path))[fmt.TAG_HISTOGRAMS][0][1]

    logged, _, steps, meta = layer_table(str(tmp_path))
    matrix, _ = steps[0]
    for i, name in enumerate(names):
        row = dict(zip(fmt.LAYER_STATS, matrix[i]))
        layer_grads = [np.asarray(g) for p, g in grads.items() if p.split("/")[0] == name]
        expected = dict(stats.gradient_stats(layer_grads))
        expected.update(stats.weight_stats(before[name], after[name]))
        sample = stats.activation_sample(np.asarray(acts[i]), 8)
        expected.update(stats.activation_stats(sample, meta["layers"][i].bounds))
        bias_grad = np.asarray(grads["conv/bias"]) if name == "conv" else None
        expected["dead_frac"] = stats.dead_fraction(sample, bias_grad)
        close(hist[i, 0], stats.gradient_histogram(layer_grads), name + " grad hist")
        close(hist[i, 1], stats.activation_histogram(sample), name + " act hist")
        close(hist[i, 0].sum(), 1.0, name + " grad hist sums to 1")
        close_row(row, expected, name)
    # Norms cover every entry, not the sample.
    head = dict(zip(fmt.LAYER_STATS, matrix[1]))
    full_norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for p, g in grads.items()
                            if p.startswith("head")))
    close(head["grad_norm"], full_norm, "head grad_norm over every entry")
    # ReLU zeros in the conv output leave zero rows in the head's kernel
    # gradient: the sampled count is compared on real zeros, not 0 vs 0.
    assert 0.06 < head["grad_zero_frac"] < 0.2


def test_step_conds_run_only_the_branch_taken():
    # The masking row and the histograms sit behind conds that must stay
    # If ops (not lowered to Switch/Merge, whose dead branch the executor
    # would walk every step); both branches still give the right values.
    from training_health.capture import tf_ops as ts

    @tf.function
    def f(x):
        return ts.cond(x > 0, lambda: x * 2.0, lambda: x - 1.0)

    assert float(f(tf.constant(3.0))) == 6.0 and float(f(tf.constant(-3.0))) == -4.0
    graph = f.get_concrete_function(tf.TensorSpec([], tf.float32)).graph
    ifs = [op for op in graph.get_operations() if op.type in ("If", "StatelessIf")]
    assert len(ifs) == 1
    assert ifs[0].get_attr("_lower_using_switch_merge") is False


def test_compiled_by_xla_tells_the_compiled_step_apart():
    from training_health.capture import tf_ops as ts

    seen = {}

    def probe(name):
        def f(x):
            seen[name] = ts.compiled_by_xla()
            return x + 1.0
        return f

    tf.function(probe("xla"), jit_compile=True)(tf.constant(1.0))
    tf.function(probe("graph"))(tf.constant(1.0))
    probe("eager")(tf.constant(1.0))
    assert seen == {"xla": True, "graph": False, "eager": False}
