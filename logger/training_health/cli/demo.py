"""`training-health demo`: the stalled CNN of the classic bug report, and a healthy twin.

Both train on the same synthetic images (a bright quadrant tells the class;
three classes with 45/35/20 % priors). The stalled run is fed raw 0..255
pixels through one convolution filter as large as the image, so its ReLU
units die in the first steps and its accuracy freezes at the majority
class's 0.45, as in the report. The healthy twin scales the pixels to [0, 1]
and uses small filters. Runs are written to LOGDIR/stalled_cnn and
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
    parser.add_argument("--framework", choices=("keras", "torch"), default=None,
                        help="train with Keras (HealthCallback) or PyTorch (HealthMonitor); "
                             "default: Keras when TensorFlow is installed, else PyTorch")
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


def stalled_cnn():
    import keras

    model = keras.Sequential([
        keras.Input((IMAGE, IMAGE, 1)),
        keras.layers.Conv2D(16, IMAGE, activation="relu", name="conv2d"),  # filter = whole image
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(CLASSES, activation="softmax", name="output"),
    ], name="stalled_cnn")
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
    for name, build in (("stalled_cnn", stalled_cnn), ("healthy_cnn", healthy_cnn)):
        keras.utils.set_random_seed(seed)
        model = build()
        callback = HealthCallback(os.path.join(logdir, name), flush_every=20, histogram_every=20)
        history = model.fit(x, y, batch_size=32, epochs=epochs, verbose=verbose, callbacks=[callback])
        callback.close()
        results[name] = (callback, history)
    return results


def torch_stalled_cnn():
    """The stalled CNN in PyTorch: one ReLU convolution as large as the image."""
    from collections import OrderedDict

    from torch import nn

    return nn.Sequential(OrderedDict(conv2d=nn.Conv2d(1, 16, IMAGE), relu=nn.ReLU(),
                                     flatten=nn.Flatten(), output=nn.Linear(16, CLASSES)))


def torch_healthy_cnn():
    from collections import OrderedDict

    from torch import nn

    return nn.Sequential(OrderedDict(
        conv2d=nn.Conv2d(1, 8, 3), relu=nn.ReLU(), pool=nn.MaxPool2d(2),
        conv2d_1=nn.Conv2d(8, 16, 3), relu_1=nn.ReLU(), gap=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(), dense=nn.Linear(16, 16), relu_2=nn.ReLU(),
        output=nn.Linear(16, CLASSES)))


def write_torch_demo_runs(logdir, epochs=6, samples=2048, seed=0):
    """`write_demo_runs` with PyTorch: the same images (channels first), the
    stalled CNN on raw pixels with SGD(0.01), the healthy twin on pixels
    scaled to [0, 1] with Adam(3e-3); returns {run name: (HealthMonitor,
    accuracy of each epoch)}."""
    import torch
    from torch import nn

    from training_health.torch import HealthMonitor

    x, y = images(samples, seed=seed)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(y.argmax(axis=1))
    results = {}
    for name, build, scale, make_optimizer in (
            ("stalled_cnn", torch_stalled_cnn, 1.0, lambda p: torch.optim.SGD(p, lr=0.01)),
            ("healthy_cnn", torch_healthy_cnn, 1.0 / 255, lambda p: torch.optim.Adam(p, lr=3e-3))):
        torch.manual_seed(seed)
        model = build()
        optimizer = make_optimizer(model.parameters())
        order = torch.Generator().manual_seed(seed)
        accuracy = []
        with HealthMonitor(os.path.join(logdir, name), model, optimizer, flush_every=20,
                           histogram_every=20) as monitor:
            for _ in range(epochs):
                correct = 0
                for idx in torch.randperm(samples, generator=order).split(32):
                    optimizer.zero_grad()
                    logits = model(x[idx] * scale)
                    loss = nn.functional.cross_entropy(logits, labels[idx])
                    loss.backward()
                    optimizer.step()
                    monitor.step(loss)
                    correct += int((logits.argmax(dim=1) == labels[idx]).sum())
                accuracy.append(correct / samples)
        results[name] = (monitor, accuracy)
    return results


def _framework(choice):
    """The framework to train with, and the error to print when it is missing."""
    import importlib.util

    has = {name: importlib.util.find_spec(module) is not None
           for name, module in (("keras", "keras"), ("torch", "torch"))}
    if choice is None:
        choice = "keras" if has["keras"] or not has["torch"] else "torch"
    if not has[choice]:
        extra = "tf" if choice == "keras" else "torch"
        return choice, "training-health demo --framework %s needs %s: pip install 'training-health[%s]'" % (
            choice, "TensorFlow" if choice == "keras" else "PyTorch", extra)
    return choice, None


def run(args):
    if args.epochs < 1 or args.samples < 32:
        print("training-health demo: --epochs must be >= 1 and --samples >= 32", file=sys.stderr)
        return 2
    framework, missing = _framework(args.framework)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.time()
    print("Training the stalled CNN and its healthy twin (%s) into %s ..."
          % ("Keras" if framework == "keras" else "PyTorch", args.logdir))
    if framework == "keras":
        results = {name: (callback, history.history["accuracy"]) for name, (callback, history) in
                   write_demo_runs(args.logdir, epochs=args.epochs, samples=args.samples,
                                   verbose=2).items()}
    else:
        results = write_torch_demo_runs(args.logdir, epochs=args.epochs, samples=args.samples)
    print()
    for name, (callback, acc) in results.items():
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
