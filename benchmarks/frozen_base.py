"""Cost of monitoring a frozen base: transfer learning with HealthCallback.

A MobileNetV2 base (random weights: no download; `trainable=False`) under a
new Dense head, trained with `fit` three ways in ONE process, interleaved
round by round:

  plain        model.fit
  default      model.fit + HealthCallback() (frozen layers are left out by
               default; the base's activation layers and the head are
               monitored)
  with_frozen  model.fit + HealthCallback(layers=...) naming what the
               default monitors plus every frozen layer (activations and
               dead units measured; no gradient)

Alerts are off (the random base's features barely vary across examples).
Prints the median wall ms/step of each, the number of monitored layers, and
as its last line:

  default_vs_plain=R1 with_frozen_vs_plain=R2 frozen_layers=F monitored=M

(M: layers the default monitors.)

Usage: python benchmarks/frozen_base.py [--rounds 5] [--steps 30] [--size 96]
"""

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.overhead import FitTimer  # noqa: E402
from training_health.capture.keras_layers import frozen_unmonitored, select_layers  # noqa: E402
from training_health.keras import HealthCallback  # noqa: E402


def make_model(size):
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False,
                                          weights=None, pooling="avg")
    base.trainable = False
    model = keras.Sequential([keras.Input((size, size, 3)), base,
                              keras.layers.Dense(10, activation="softmax", name="head")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="batches per timed fit call")
    parser.add_argument("--size", type=int, default=96, help="image side")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    batch = 32
    n = batch * args.steps
    x = np.random.rand(n, args.size, args.size, 3).astype("float32")
    y = np.random.randint(0, 10, n)
    tmp = tempfile.mkdtemp(prefix="th-frozen-")
    models = {name: make_model(args.size) for name in ("plain", "default", "with_frozen")}
    chosen = select_layers(models["default"])
    frozen = frozen_unmonitored(models["default"], chosen)
    names = [re.escape(layer.name) for layer in chosen] + [re.escape(n) for n in frozen]
    callbacks = {
        "plain": [],
        "default": [HealthCallback(os.path.join(tmp, "default"), histogram_every=100,
                                   detectors=None)],
        "with_frozen": [HealthCallback(os.path.join(tmp, "with_frozen"), histogram_every=100,
                                       layers=names, detectors=None)],
    }
    for name, model in models.items():  # warm-up: tracing
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=callbacks[name])
    timer = FitTimer()
    times = {name: [] for name in models}
    for r in range(args.rounds):
        names = list(models) if r % 2 == 0 else list(reversed(list(models)))
        for name in names:
            models[name].fit(x, y, batch_size=batch, epochs=1, verbose=0,
                             callbacks=[timer.first] + callbacks[name] + [timer.last])
            times[name].append(timer.per_step_ms(args.steps)[0])
    med = {name: statistics.median(v) for name, v in times.items()}
    for name, v in times.items():
        print("%-11s median %.1f ms/step wall (by round: %s)"
              % (name, med[name], " ".join("%.1f" % t for t in v)))
    monitored = len(callbacks["default"][0]._program.layers)
    print("monitored layers: default %d, with the %d frozen ones %d"
          % (monitored, len(frozen), len(callbacks["with_frozen"][0]._program.layers)))
    for cbs in callbacks.values():
        for cb in cbs:
            cb.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print("default_vs_plain=%.2f with_frozen_vs_plain=%.2f frozen_layers=%d monitored=%d"
          % (med["default"] / med["plain"], med["with_frozen"] / med["plain"], len(frozen),
             monitored))


if __name__ == "__main__":
    main()
