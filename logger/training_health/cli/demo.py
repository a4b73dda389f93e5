"""`training-health demo`: the frozen-accuracy CNN of the classic bug report, and a healthy twin.

Both train on the same synthetic images (a bright quadrant tells the class;
three classes with 45/35/20 % priors). The frozen run is fed raw 0..255
pixels through one convolution filter as large as the image, so its ReLU
units die in the first steps and its accuracy freezes at the majority
class's 0.45, as in the report. The healthy twin scales the pixels to [0, 1]
and uses small filters. Runs are written to LOGDIR/frozen_cnn and
LOGDIR/healthy_cnn.
"""

import os
import sys
import time

IMAGE = 28
CLASSES = 3
PRIORS = (0.45, 0.35, 0.20)


def add_arguments(parser):
    parser.add_argument("--logdir", default="runs", help="where to write the runs (default: ./runs)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run (default: 6)")
    parser.add_argument("--samples", type=int, default=2048, help="training images (default: 2048)")


def images(n, seed=0):
    """Raw 0..255 grey images [n, 28, 28, 1] and one-hot labels [n, 3]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.choice(CLASSES, size=n, p=PRIORS)
    x = rng.integers(0, 160, (n, IMAGE, IMAGE, 1)).astype("float32")
    half = IMAGE // 2
    for c in range(CLASSES):
        r, col = divmod(c, 2)
        x[labels == c, r * half:(r + 1) * half, col * half:(col + 1) * half, :] += 95.0
    return x, np.eye(CLASSES, dtype="float32")[labels]


def frozen_cnn():
    import keras

    model = keras.Sequential([
        keras.Input((IMAGE, IMAGE, 1)),
        keras.layers.Conv2D(16, IMAGE, activation="relu", name="conv2d"),  # filter = whole image
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(CLASSES, activation="softmax", name="output"),
    ], name="frozen_cnn")
    model.compile(keras.optimizers.SGD(0.01), "categorical_crossentropy", metrics=["accuracy"])
    return model


def healthy_cnn():
    import keras

    model = keras.Sequential([
        keras.Input((IMAGE, IMAGE, 1)),
        keras.layers.Rescaling(1.0 / 255, name="rescale"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2d"),
        keras.layers.MaxPooling2D(name="pool"),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv2d_1"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(16, activation="relu", name="dense"),
        keras.layers.Dense(CLASSES, activation="softmax", name="output"),
    ], name="healthy_cnn")
    model.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy", metrics=["accuracy"])
    return model


def write_demo_runs(logdir, epochs=6, samples=2048, verbose=0, seed=0):
    """Trains both models into `logdir`; returns {run name: (HealthCallback, History)}."""
    import keras

    from training_health.keras import HealthCallback

    x, y = images(samples, seed=seed)
    results = {}
    for name, build in (("frozen_cnn", frozen_cnn), ("healthy_cnn", healthy_cnn)):
        keras.utils.set_random_seed(seed)
        model = build()
        callback = HealthCallback(os.path.join(logdir, name), flush_every=20, histogram_every=20)
        history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=verbose, callbacks=[callback])
        callback.close()
        results[name] = (callback, history)
    return results


def run(args):
    if args.epochs < 1 or args.samples < 32:
        print("training-health demo: --epochs must be >= 1 and --samples >= 32", file=sys.stderr)
        return 2
    try:
        import keras  # noqa: F401
    except ImportError:
        print("training-health demo needs TensorFlow: pip install 'training-health[tf]'", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.time()
    print("Training the frozen-accuracy CNN and its healthy twin into %s ..." % args.logdir)
    results = write_demo_runs(args.logdir, epochs=args.epochs, samples=args.samples, verbose=2)
    print()
    for name, (callback, history) in results.items():
        acc = history.history["accuracy"]
        print("%-12s accuracy by epoch: %s" % (name, " ".join("%.4f" % a for a in acc)))
        for alert in callback.alerts:
            print("  [%s] %s at step %d%s: %s" % (alert.severity, alert.kind, alert.step,
                                                 " in " + alert.layer if alert.layer else "", alert.message))
            print("      hint: %s" % alert.hint)
    print()
    print("Done in %.0f s. See why the first run stopped learning:" % (time.time() - start))
    print("  tensorboard --logdir %s        # then open the Training Health tab" % args.logdir)
    print("  training-health check %s       # the same alerts in the terminal" % args.logdir)
    return 0
