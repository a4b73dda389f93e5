"""One worker of a MultiWorkerMirroredStrategy run on the CPU (127.0.0.1),
for tests/test_keras_multi_worker.py; also the single-process reference it
is compared to.

    python tests/thtest_keras_mwms.py INDEX PORT0,PORT1 LOGDIR fit|loop [DIE_AT]

Every worker trains the same model (same initial weights) on LOGDIR (the
same path for every worker, as users write it): with `fit` and a
HealthCallback, or (loop) with a custom training loop and a
`training_health.tf.HealthMonitor`. Worker i takes the i-th half of each
global batch. With DIE_AT (fit), worker 1 ends its process (os._exit, no
clean-up) at the end of batch DIE_AT. Each worker prints one JSON line:
what its logger did.
"""

import json
import os
import sys

STEPS = 4
GLOBAL_BATCH = 16
WORKERS = 2


def data():
    import numpy as np

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(STEPS * GLOBAL_BATCH, 6)) * 2).astype("float32")
    y = rng.integers(0, 3, STEPS * GLOBAL_BATCH)
    return x, y


def make_model():
    """A small model, the same initial weights wherever it is built. Its
    "dead" layer never fires (bias -50): the dead_units alert the test
    expects exactly once."""
    import keras
    import numpy as np

    inp = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="h")(inp)
    t = keras.layers.Dense(6, activation="tanh", name="t")(h)
    dead = keras.layers.Dense(4, activation="relu", name="dead")(h)
    out = keras.layers.Dense(3, activation="softmax", name="o")(keras.layers.Concatenate()([t, dead]))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=w.shape).astype("float32") * 0.5 for w in model.get_weights()]
    weights[[w.path for w in model.weights].index("dead/bias")] -= 50.0
    model.set_weights(weights)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def options(alerts_seen):
    """The logger's arguments, the same for the callback and the monitor."""
    from training_health.detectors import DeadUnitsDetector, DetectorSuite

    return dict(histogram_every=1, activation_examples=None, on_alert=alerts_seen.append,
                detectors=DetectorSuite([DeadUnitsDetector(patience=1, min_observations=2)]))


def make_callback(logdir, alerts_seen):
    from training_health.keras import HealthCallback

    return HealthCallback(logdir, flush_every=1, **options(alerts_seen))


def train_single(logdir):
    """The reference: one process, the whole global batch per step."""
    x, y = data()
    model = make_model()
    seen = []
    cb = make_callback(logdir, seen)
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[cb])
    cb.close()
    return cb


def keras_multi_worker_workaround(model):
    """Keras 3 (3.15.1 with TensorFlow 2.21 here) cannot `fit` under
    MultiWorkerMirroredStrategy on its own, with or without a callback
    (keras-team/keras#20585, tensorflow/tensorflow#72388):

    * `fit` first reduces one input batch across workers for a symbolic
      build, `strategy.reduce("MEAN", (x, y))`, and the strategy's reduce
      takes no nested structure: "Attempt to convert a value (PerReplica...)
      with an unsupported type ... to a Tensor". The model here is built and
      compiled before `fit`, so that build has nothing to do: skipped.
    * every step's logs are reduced across workers with
      `strategy.reduce("MEAN", v, axis=0)`, which fails for the scalar loss:
      "Invalid reduction dimension 0 for input with 0 dimensions". Reduced
      with axis=None instead (the mean over replicas).
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    model._symbolic_build(data_batch=(tf.zeros([1, 6]), tf.zeros([1], tf.int64)))
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean"):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    trainer.reduce_per_replica = reduce_per_replica


def train_loop(strategy, model, dataset, logdir, alerts_seen):
    """A custom training loop as TensorFlow's multi-worker tutorial writes it."""
    import keras
    import tensorflow as tf
    from training_health.tf import HealthMonitor

    monitor = HealthMonitor(logdir, model, model.optimizer, collect_secs=0.2, **options(alerts_seen))
    per_example_loss = keras.losses.SparseCategoricalCrossentropy(reduction=None)

    @tf.function
    def train_step(iterator):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                loss = tf.nn.compute_average_loss(per_example_loss(y, model(x, training=True)),
                                                  global_batch_size=GLOBAL_BATCH)
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
            monitor.record(x, loss, grads)
            return loss

        return strategy.run(replica_step, args=next(iterator))

    iterator = iter(dataset)
    for _ in range(STEPS):
        train_step(iterator)
    monitor.close()
    return monitor


def main(index, ports, logdir, mode, die_at=None):
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": ["127.0.0.1:%d" % p for p in ports]},
        "task": {"type": "worker", "index": index}})
    import keras
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # the defaults: no collective timeout
    with strategy.scope():
        model = make_model()
        if mode == "fit":
            keras_multi_worker_workaround(model)
    x, y = data()
    share = GLOBAL_BATCH // WORKERS

    def dataset(context):
        # This worker's block of each global batch, in order.
        w = context.input_pipeline_id
        rows = [i for s in range(STEPS) for i in range(s * GLOBAL_BATCH + w * share,
                                                       s * GLOBAL_BATCH + (w + 1) * share)]
        batch = context.get_per_replica_batch_size(GLOBAL_BATCH)
        return tf.data.Dataset.from_tensor_slices((x[rows], y[rows])).batch(batch).repeat()

    class Die(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if index == 1 and batch == die_at:
                print("worker 1 exits at batch %d" % batch, flush=True)
                os._exit(3)

    seen = []
    if mode == "loop":
        logger = train_loop(strategy, model, strategy.distribute_datasets_from_function(dataset),
                            logdir, seen)
    else:
        logger = make_callback(logdir, seen)
        model.fit(strategy.distribute_datasets_from_function(dataset), epochs=1,
                  steps_per_epoch=STEPS, verbose=0, callbacks=[logger, Die()])
        logger.close()
    print(json.dumps(dict(worker=index, chief=strategy.extended.should_save_summary,
                          writes=logger._host is not None, alerts=len(logger.alerts),
                          on_alert=len(seen))), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), [int(p) for p in sys.argv[2].split(",")], sys.argv[3], sys.argv[4],
         int(sys.argv[5]) if len(sys.argv) > 5 else None)
