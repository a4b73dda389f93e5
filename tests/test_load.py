"""`training_health.load(path)` on real event files written by RunWriter: the
long per-layer frame, the global series and the alerts hold exactly what
was written, for one run and for every run of a logdir; pandas missing is a
clear ImportError; no TensorFlow is imported."""

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import training_health
from conftest import write_sample_run
from training_health import format as fmt
from training_health.io.run_writer import RunWriter
from training_health.records import LayerInfo


def test_one_run_in_long_form(sample_run):
    data = training_health.load(sample_run.path)
    assert data.runs == ["."]
    layers = data.layers
    assert list(layers.columns) == ["run", "step", "layer"] + list(fmt.LAYER_STATS)
    names = [info.name for info in sample_run.layers]
    assert len(layers) == len(sample_run.steps) * len(names)
    for step in sample_run.steps:
        rows = layers[layers.step == step]
        assert list(rows.layer) == names
        np.testing.assert_array_equal(rows[list(fmt.LAYER_STATS)].to_numpy(), sample_run.layer_values[step])
    assert layers.dtypes["grad_norm"] == np.float32
    # NaN is "not measured": flatten has no gradient.
    assert layers[layers.layer == "flatten"].grad_norm.isna().all()
    # A pivot per statistic, as the docs show.
    pivot = layers.pivot_table(index="step", columns="layer", values="act_mean", observed=True)
    assert pivot.loc[sample_run.steps[-1], "hidden"] == sample_run.layer_values[sample_run.steps[-1]][
        2, fmt.LAYER_STATS.index("act_mean")]


def test_global_series_and_alerts(sample_run):
    data = training_health.load(sample_run.path)
    series = data.series
    names = list(fmt.GLOBAL_STATS) + list(sample_run.metric_names)
    assert list(series.columns) == ["run", "step", "wall_time"] + names
    assert list(series.step) == sample_run.steps
    np.testing.assert_array_equal(series[names].to_numpy(),
                                  np.stack([sample_run.global_values[s] for s in sample_run.steps]))
    assert list(series.wall_time) == [1000.0 + s for s in sample_run.steps]
    (alert,) = sample_run.alerts[sample_run.steps[-1]]
    assert data.alerts.to_dict("records") == [{
        "run": ".", "step": alert.step, "kind": alert.kind, "layer": alert.layer,
        "severity": alert.severity, "message": alert.message, "hint": alert.hint, "cleared": False}]
    info = data.layer_info
    assert list(info.layer) == [layer.name for layer in sample_run.layers]
    assert list(info.activation) == [layer.activation for layer in sample_run.layers]
    assert info.set_index("layer").loc["hidden", "bounds"] == (0.0, 1.0)


def test_every_run_of_a_logdir_with_a_run_column(tmp_path):
    logs = tmp_path / "logs"
    first = write_sample_run(logs / "lr_0.1", steps=(1, 2, 3), seed=1)
    second = write_sample_run(logs / "lr_0.01", steps=(10, 20), seed=2)
    data = training_health.load(logs)
    assert data.runs == ["lr_0.01", "lr_0.1"]
    counts = data.layers.groupby("run", observed=True).size().to_dict()
    assert counts == {"lr_0.01": 2 * 4, "lr_0.1": 3 * 4}
    one = data.run("lr_0.1")
    assert one.runs == ["lr_0.1"]
    assert list(one.series.step) == [1, 2, 3]
    np.testing.assert_array_equal(
        one.layers[one.layers.step == 2][list(fmt.LAYER_STATS)].to_numpy(), first.layer_values[2])
    np.testing.assert_array_equal(
        data.run("lr_0.01").series[list(fmt.GLOBAL_STATS)].to_numpy()[1],
        second.global_values[20][:len(fmt.GLOBAL_STATS)])
    assert list(data.alerts.run) == ["lr_0.01", "lr_0.1"]
    assert list(data.layer_info.run.unique()) == ["lr_0.01", "lr_0.1"]
    with pytest.raises(KeyError, match="lr_0.1"):
        data.run("lr_1")


def test_layers_that_change_mid_run_and_runs_with_different_metrics(tmp_path):
    a, b = LayerInfo("a", "Dense"), LayerInfo("b", "Dense")
    rows = np.ones((1, len(fmt.LAYER_STATS)), dtype=np.float32)
    writer = RunWriter(str(tmp_path / "logs" / "x"), [a])
    writer.write_step(1, rows, np.zeros(len(fmt.GLOBAL_STATS)))
    writer.close()
    # A second writer of the same run (a resumed job) monitors two layers.
    writer = RunWriter(str(tmp_path / "logs" / "x"), [a, b], metric_names=("acc",))
    writer.write_step(2, np.vstack([rows, 2 * rows]), np.arange(len(fmt.GLOBAL_STATS) + 1))
    writer.close()
    data = training_health.load(tmp_path / "logs")
    assert [(s, l) for s, l in zip(data.layers.step, data.layers.layer)] == [(1, "a"), (2, "a"), (2, "b")]
    assert list(data.layers.grad_norm) == [1.0, 1.0, 2.0]
    # "acc" was logged at step 2 only.
    assert np.isnan(data.series.acc[0]) and data.series.acc[1] == len(fmt.GLOBAL_STATS)
    assert list(data.layer_info.layer) == ["a", "b"]  # the newest metadata


def test_a_folder_without_our_data_gives_empty_frames_and_a_missing_one_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    data = training_health.load(tmp_path / "empty")
    assert data.runs == [] and len(data.layers) == 0 and len(data.alerts) == 0
    assert list(data.layers.columns)[:3] == ["run", "step", "layer"]
    assert "loss" in data.series.columns
    with pytest.raises(FileNotFoundError):
        training_health.load(tmp_path / "missing")


def test_without_pandas_the_error_names_the_extra(sample_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # any import of pandas fails
    with pytest.raises(ImportError, match=r"pip install 'training-health\[pandas\]'"):
        training_health.load(sample_run.path)


def test_load_needs_no_tensorflow(sample_run, python_exe):
    code = textwrap.dedent("""
        import sys
        for name in ("tensorflow", "keras", "torch"):
            sys.modules[name] = None
        import training_health
        data = training_health.load(sys.argv[1])
        print(len(data.layers), len(data.series))
    """)
    out = subprocess.run([python_exe, "-c", code, sample_run.path], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(len(sample_run.steps) * len(sample_run.layers)), str(len(sample_run.steps))]


def test_frames_are_pandas(sample_run):
    data = training_health.load(sample_run.path)
    for frame in (data.layers, data.series, data.alerts, data.layer_info):
        assert isinstance(frame, pd.DataFrame)
