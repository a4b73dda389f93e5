"""Server-side reduction of per-step arrays (plugin/downsample.py)."""

import numpy as np
import pytest

from tensorboard_plugin_training_health import downsample


def test_buckets_tile_the_step_range_and_follow_steps_not_sample_count():
    # Dense samples early, sparse late (as a reservoir keeps them).
    steps = np.concatenate([np.arange(0, 100), np.arange(100, 1000, 100), [999]])
    first, last, reduced = downsample.reduce_columns(steps, steps.astype(float), 10)
    assert first.tolist() == list(range(0, 1000, 100))  # buckets of 100 steps each
    assert last.tolist() == [99] + list(range(100, 900, 100)) + [999]
    assert reduced[0] == pytest.approx(49.5) and reduced[9] == pytest.approx(949.5)
    assert (first[1:] > last[:-1]).all()


def test_mean_ignores_nan_keeps_inf_and_marks_empty_buckets():
    steps = np.arange(6)
    values = np.array([[1, np.nan], [3, np.nan], [np.nan, np.nan], [np.nan, np.nan],
                       [2, np.inf], [4, 1]], dtype=np.float32)
    first, last, reduced = downsample.reduce_columns(steps, values, 3)
    assert first.tolist() == [0, 2, 4] and last.tolist() == [1, 3, 5]
    assert reduced[0, 0] == 2 and np.isnan(reduced[0, 1])
    assert np.isnan(reduced[1]).all()
    assert reduced[2, 0] == 3 and reduced[2, 1] == np.inf


def test_max_and_min():
    steps = np.arange(4)
    values = np.array([1, np.nan, 5, 2], dtype=np.float32)
    assert downsample.reduce_columns(steps, values, 2, "max")[2].tolist() == [1, 5]
    assert downsample.reduce_columns(steps, values, 2, "min")[2].tolist() == [1, 2]
    with pytest.raises(ValueError, match="reduce must be one of"):
        downsample.reduce_columns(steps, values, 2, "median")


def test_full_resolution_and_empty_input():
    first, last, reduced = downsample.reduce_columns([3, 7], [[1.0], [2.0]], 10)
    assert first.tolist() == [3, 7] and last.tolist() == [3, 7] and reduced.tolist() == [[1], [2]]
    first, _, reduced = downsample.reduce_columns([], np.zeros((0, 4)), 10)
    assert len(first) == 0 and reduced.shape == (0, 4)


def test_width_bounds_the_columns_of_a_long_run():
    steps = np.arange(100000)
    values = np.random.default_rng(0).random((100000, 50)).astype(np.float32)
    first, last, reduced = downsample.reduce_columns(steps, values, 1000)
    assert reduced.shape == (1000, 50) and last[-1] == 99999
    np.testing.assert_allclose(reduced[7], values[700:800].mean(axis=0), rtol=1e-5)


def test_pick_samples_keeps_last():
    assert downsample.pick_samples(np.arange(10), 3).tolist() == [0, 4, 9]
    assert downsample.pick_samples(np.arange(10), 1).tolist() == [9]
    assert downsample.pick_samples(np.arange(2), 5).tolist() == [0, 1]


def test_json_values():
    out = downsample.to_json_values(np.array([[1.23456789e-7, np.nan], [np.inf, -np.inf]]))
    assert out == [[1.2346e-07, None], ["Infinity", "-Infinity"]]
    assert downsample.to_json_values(np.float32([0.3, 7.92531e-19])) == [0.3, 7.9253e-19]
    assert downsample.to_json_values(np.zeros((2, 0))) == [[], []]
