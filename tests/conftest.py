"""Shared fixtures: a small, fully known Training Health run on disk.

`sample_run` writes real event files through `RunWriter` (no TensorFlow) and
returns what was written, so tests of readers (format, plugin, CLI) can
compare what they read with the truth.
"""

import dataclasses
import os
import sys

import numpy as np
import pytest

from training_health import format as fmt
from training_health.records import Alert, EpochStats, LayerInfo
from training_health.io.run_writer import RunWriter

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_sessionstart(session):
    """Refuses to test another copy of the package than this checkout's."""
    import training_health

    expected = os.path.join(REPO_ROOT, "logger", "training_health", "__init__.py")
    if os.path.realpath(training_health.__file__) != os.path.realpath(expected):
        raise pytest.UsageError(
            "the tests import training_health from %s, not from this checkout (%s); "
            "run `pip install -e .` here first" % (training_health.__file__, expected)
        )


@dataclasses.dataclass
class SampleRun:
    """What `write_sample_run` wrote.

    Attributes:
        path: the run directory (holds one event file).
        layers: the LayerInfo rows of every layer matrix.
        metric_names: compiled-metric names after GLOBAL_STATS.
        steps: logged global steps, increasing.
        layer_values: dict step -> float32 [L, len(LAYER_STATS)].
        global_values: dict step -> float32 [len(GLOBAL_STATS) + len(metric_names)].
        histograms: dict step -> float32 [L, 2, HIST_ROW].
        alerts: dict step -> list of Alert.
        epochs: list of EpochStats (two: the second validated, with a NaN
            and an Inf).
    """

    path: str
    layers: tuple
    metric_names: tuple
    steps: list
    layer_values: dict
    global_values: dict
    histograms: dict
    alerts: dict
    epochs: list = dataclasses.field(default_factory=list)


def sample_layers():
    """Four layers: conv (relu), flatten (no weights), dense (sigmoid), output (softmax)."""
    return (
        LayerInfo("conv", "Conv2D", "relu", None, 8, True, True),
        LayerInfo("flatten", "Flatten", "linear", None, 128, False, True),
        LayerInfo("hidden", "Dense", "sigmoid", (0.0, 1.0), 16, True, True),
        LayerInfo("out", "Dense", "softmax", (0.0, 1.0), 10, True, False, is_output=True),
    )


def write_sample_run(path, steps=(1, 2, 3, 5, 8), seed=0):
    """Writes a run with known values under `path` and closes it.

    Args:
        path: run directory to create.
        steps: increasing global steps to log. Histograms are written at the
            first and last step, one alert at the last step, epochs at the
            middle and the last step.
        seed: seed of the random values.

    Returns:
        A SampleRun.
    """
    rng = np.random.default_rng(seed)
    layers = sample_layers()
    metric_names = ("accuracy",)
    writer = RunWriter(path, layers, metric_names=metric_names)
    run = SampleRun(str(path), layers, metric_names, list(steps), {}, {}, {}, {})
    n_global = len(fmt.GLOBAL_STATS) + len(metric_names)
    for step in steps:
        values = rng.standard_normal((len(layers), len(fmt.LAYER_STATS))).astype(np.float32)
        grad_cols = [fmt.LAYER_STATS.index(s) for s in fmt.LAYER_STATS if s.startswith("grad_")]
        act_cols = [fmt.LAYER_STATS.index(s) for s in fmt.LAYER_STATS if s.startswith("act_")]
        values[1, grad_cols] = np.nan  # flatten has no weights
        values[3, act_cols] = np.nan  # out's output was not captured
        global_values = rng.standard_normal(n_global).astype(np.float32)
        writer.write_step(step, values, global_values, wall_time=1000.0 + step)
        run.layer_values[step] = values
        run.global_values[step] = global_values
        if step in (steps[0], steps[-1]):
            hist = rng.random((len(layers), len(fmt.HIST_SERIES), fmt.HIST_ROW)).astype(np.float32)
            writer.write_histograms(step, hist, wall_time=1000.0 + step)
            run.histograms[step] = hist
        if step in (steps[(len(steps) - 1) // 2], steps[-1]) and len(steps) > 1:
            metrics = {"loss": float(rng.random()), "accuracy": 0.5}
            if step == steps[-1]:
                metrics.update(val_loss=float("nan"), val_accuracy=float("inf"))
            epoch = EpochStats(step, len(run.epochs) + 1, metrics)
            writer.write_epoch(step, epoch.epoch, epoch.metrics, wall_time=1000.0 + step)
            run.epochs.append(epoch)
    alert = Alert("dead_units", steps[-1], "conv", "warning", "75% of conv's units are dead", "lower the learning rate")
    writer.write_alerts(steps[-1], [alert], wall_time=1000.0 + steps[-1])
    run.alerts[steps[-1]] = [alert]
    writer.close()
    return run


@pytest.fixture
def sample_run(tmp_path):
    """A SampleRun written to `tmp_path/logs/run1` (logdir is `tmp_path/logs`)."""
    return write_sample_run(tmp_path / "logs" / "run1")


@pytest.fixture
def python_exe():
    """The interpreter running the tests (use it for subprocesses)."""
    return sys.executable
