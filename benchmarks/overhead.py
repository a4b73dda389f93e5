"""Overhead of HealthCallback against plain `fit` and Keras's TensorBoard callback.

Trains one benchmark CNN (conv + dense layers, batch 64) three ways in ONE
process, interleaving the variants round by round so that machine noise hits
all of them alike, with `--instances` models per variant:

  plain      model.fit
  health     model.fit + HealthCallback (statistics every batch)
  keras_tb   model.fit + keras.callbacks.TensorBoard(histogram_freq=1, update_freq="batch")

Each variant's time per step is measured from the start to the end of
training inside each fit call (wall clock and process CPU time); prints the
median over rounds and instances of each, the ratios to plain, and the bytes
the HealthCallback wrote per monitored layer per step (its event files go to a
temporary folder, removed at the end). The last line (ratios of the median wall
times) reads:

  health_callback_vs_plain=R1 keras_tensorboard_vs_plain=R2 bytes_per_layer_step=B

Usage: python benchmarks/overhead.py [--rounds 5] [--steps 50] [--instances 4] [--model cifar|small] [--jit]
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from training_health.keras import HealthCallback  # noqa: E402


def make_model(jit, kind="cifar"):
    """`cifar`: the classic Keras CIFAR-10 example CNN (4 conv, 2 dense, dropout);
    `small`: a tiny CNN whose step is so cheap that fixed per-op costs show."""
    if kind == "cifar":
        layers = [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Dropout(0.25),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Dropout(0.25),
            keras.layers.Flatten(),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10, activation="softmax"),
        ]
        model = keras.Sequential(layers)
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=jit)
        return model
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=jit)
    return model


class FitTimer(keras.callbacks.Callback):
    """Wall and CPU time from the start of training to its end, per step.

    Pass `timer.first` before the callbacks being measured and `timer.last`
    after them: the span covers every callback hook (epoch-end work
    included) and leaves out what `fit` itself does before training begins
    and after it ends (on this machine, some fit calls spend ~0.3 s after
    `on_train_end`, whatever the callbacks).
    """

    def __init__(self):
        super().__init__()
        timer = self

        class First(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                timer.begin = (time.perf_counter(), time.process_time())

        class Last(keras.callbacks.Callback):
            def on_train_end(self, logs=None):
                timer.end = (time.perf_counter(), time.process_time())

        self.first, self.last = First(), Last()

    def per_step_ms(self, steps):
        (w0, c0), (w1, c1) = self.begin, self.end
        return (w1 - w0) * 1000.0 / steps, (c1 - c0) * 1000.0 / steps


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50, help="batches per timed fit call")
    parser.add_argument("--instances", type=int, default=4, help="models per variant")
    parser.add_argument("--jit", action="store_true", help="compile the train step with XLA")
    parser.add_argument("--model", choices=("cifar", "small"), default="cifar",
                        help="benchmark CNN (default: cifar, the classic Keras CIFAR-10 example)")
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    batch = 64
    n = batch * args.steps
    x = np.random.rand(n, 32, 32, 3).astype("float32")
    y = np.random.randint(0, 10, n)
    tmp = tempfile.mkdtemp(prefix="th-bench-")
    # Several models per variant: two identical models can differ by a few %
    # for their whole life (which kernels share a thread), which would
    # otherwise be read as the cost of a callback. With two models per
    # variant the printed ratio moved by 2-3 points between runs on a 2-core
    # CPU, by which modes the few plain models drew; four models each
    # (20 timed fits per variant) sample those modes better.
    variants = {"plain": [], "health": [], "keras_tb": []}
    health_callbacks = []
    for i in range(args.instances):
        health = HealthCallback(os.path.join(tmp, "health_%d" % i), histogram_every=100)
        health_callbacks.append(health)
        variants["plain"].append((make_model(args.jit, args.model), []))
        variants["health"].append((make_model(args.jit, args.model), [health]))
        variants["keras_tb"].append((make_model(args.jit, args.model), [keras.callbacks.TensorBoard(
            os.path.join(tmp, "keras_tb_%d" % i), histogram_freq=1, update_freq="batch")]))
    runs = [(name, i, *instances[i]) for i in range(args.instances) for name, instances in variants.items()]
    for _, _, model, callbacks in runs:  # warm-up: tracing and first-epoch costs
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=callbacks)
    for health in health_callbacks:
        health._host.writer.flush()
    bytes_before = sum(dir_bytes(h.logdir) for h in health_callbacks)
    steps_before = sum(h._host.collector.last_step for h in health_callbacks)

    timer = FitTimer()
    times = {name: [] for name in variants}
    cpu = {name: [] for name in variants}  # process CPU time: less sensitive to other load
    by_instance = {(name, i): [] for name, i, _, _ in runs}
    for r in range(args.rounds):
        for name, i, model, callbacks in (runs if r % 2 == 0 else list(reversed(runs))):
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0,
                      callbacks=[timer.first] + callbacks + [timer.last])
            wall_ms, cpu_ms = timer.per_step_ms(args.steps)
            times[name].append(wall_ms)
            cpu[name].append(cpu_ms)
            by_instance[name, i].append(wall_ms)
    for health in health_callbacks:
        health._host.writer.flush()
    logged_steps = sum(h._host.collector.last_step for h in health_callbacks) - steps_before
    n_layers = len(health_callbacks[0]._program.layers)
    bytes_written = sum(dir_bytes(h.logdir) for h in health_callbacks) - bytes_before
    bytes_per_layer_step = bytes_written / (n_layers * logged_steps)

    med = {name: statistics.median(v) for name, v in times.items()}
    med_cpu = {name: statistics.median(v) for name, v in cpu.items()}
    for name, v in times.items():
        print("%-9s median %.2f ms/step wall, %.2f ms/step CPU  (wall by round: %s)"
              % (name, med[name], med_cpu[name], " ".join("%.1f" % t for t in v)))
    print("median wall ms/step of each model instance (the spread of one variant's "
          "instances is the noise floor of the ratios): " + "; ".join(
              "%s %s" % (name, " ".join("%.1f" % statistics.median(by_instance[name, i])
                                        for i in range(args.instances)))
              for name in variants))
    print("CPU-time ratios: health_callback_vs_plain=%.2f keras_tensorboard_vs_plain=%.2f"
          % (med_cpu["health"] / med_cpu["plain"], med_cpu["keras_tb"] / med_cpu["plain"]))
    print("monitored layers: %d, steps logged in timed rounds: %d" % (n_layers, logged_steps))
    for health in health_callbacks:
        health.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print("health_callback_vs_plain=%.2f keras_tensorboard_vs_plain=%.2f bytes_per_layer_step=%.0f"
          % (med["health"] / med["plain"], med["keras_tb"] / med["plain"], bytes_per_layer_step))

if __name__ == "__main__":
    main()
