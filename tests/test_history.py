"""Long runs: layer rows after `history_after` steps go into history blocks
(`training_health.io.history`), written by the real `RunWriter` and read
back by every reader (run reader, `load`, `check`, the plugin's routes)."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from training_health import format as fmt
from training_health.io import history, reader
from training_health.io.run_writer import RunWriter
from training_health.records import Alert, LayerInfo

LAYERS = (LayerInfo("conv", "Conv2D", "relu", None, 4, True, True),
          LayerInfo("out", "Dense", "softmax", (0.0, 1.0), 3, True, True, True))
AFTER, BLOCK, STEPS = 100, 10, 300
ALERT_STEP, CLEARED_STEP = 155, 233


def row(step):
    """A distinct layer matrix per step; act_saturated_frac of `conv` is
    never measured (NaN) and its grad_max_abs is NaN on odd steps."""
    values = np.arange(len(LAYERS) * len(fmt.LAYER_STATS), dtype=np.float32).reshape(
        len(LAYERS), len(fmt.LAYER_STATS)) + np.float32(np.sin(step) * 10 + step)
    values[0, fmt.LAYER_STATS.index("act_saturated_frac")] = np.nan
    if step % 2:
        values[0, fmt.LAYER_STATS.index("grad_max_abs")] = np.nan
    return values


def glob(step):
    return np.full(len(fmt.GLOBAL_STATS), step, dtype=np.float32)


def write_long_run(path, steps=range(STEPS), histogram_every=None):
    writer = RunWriter(str(path), LAYERS, history_after=AFTER, history_block=BLOCK)
    for step in steps:
        writer.write_step(step, row(step), glob(step), wall_time=1000.0 + step)
        if step == ALERT_STEP:
            writer.write_alerts(step, [Alert("dead_units", step, "conv", "warning", "m", "h")])
        if step == CLEARED_STEP:
            writer.write_alerts(step, [Alert("dead_units", step, "conv", "warning", "over", "",
                                             cleared=True)])
        if histogram_every and step % histogram_every == 0:
            writer.write_histograms(step, np.full((len(LAYERS), 2, fmt.HIST_ROW), step, np.float32))
    writer.close()


# Blocks of 10 steps from step 100: kept whole are the alert's block (150-159)
# and the one before (140-149), the cleared record's block (230-239) and the
# one before (220-229), and the last two (280-299).
KEPT_BLOCKS = {14, 15, 22, 23, 28, 29}


def expected_full_steps():
    return [s for s in range(STEPS) if s < AFTER or s // BLOCK in KEPT_BLOCKS]


def expected_history_blocks():
    """Every finished block is summarized when it ends, except those marked
    kept before they ended (the alert's block, the cleared record's block,
    the run's last one); blocks kept because of a later alert keep their
    summary too."""
    return [b for b in range(AFTER // BLOCK, STEPS // BLOCK) if b not in (15, 23, 29)]


def test_summarize_is_nan_ignoring_min_mean_max():
    rows = np.array([[[1.0, np.nan, 5.0]], [[3.0, np.nan, np.nan]], [[-2.0, np.nan, 7.0]]],
                    dtype=np.float32)
    out = history.summarize(rows)
    assert out.shape == (len(fmt.HISTORY_REDUCTIONS), 1, 3)
    by = dict(zip(fmt.HISTORY_REDUCTIONS, out))
    np.testing.assert_array_equal(by["min"][0], [-2.0, np.nan, 5.0])
    np.testing.assert_allclose(by["mean"][0], [2.0 / 3.0, np.nan, 6.0], rtol=1e-6)
    np.testing.assert_array_equal(by["max"][0], [3.0, np.nan, 7.0])


def test_run_reader_gets_every_global_step_the_kept_rows_and_exact_summaries(tmp_path):
    write_long_run(tmp_path)
    run, has_data = reader.read_run(str(tmp_path))
    assert has_data
    assert [s.step for s in run.steps] == list(range(STEPS))
    for s in run.steps:
        assert s.global_values["loss"] == s.step
    full = [s for s in run.steps if len(s.layers)]
    assert [s.step for s in full] == expected_full_steps()
    for s in full:  # rows written after their steps' global values were merged back
        np.testing.assert_array_equal(s.layer_values, row(s.step))
    assert [b.first_step // BLOCK for b in run.history] == expected_history_blocks()
    for block in run.history:
        steps = range(block.first_step, block.first_step + BLOCK)
        assert block.step == steps[-1]
        assert block.reductions == fmt.HISTORY_REDUCTIONS
        assert [i.name for i in block.layers] == [i.name for i in LAYERS]
        rows = np.stack([row(s) for s in steps])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the all-NaN column
            reference = {"min": np.nanmin(rows, axis=0), "max": np.nanmax(rows, axis=0),
                         "mean": np.nanmean(rows, axis=0)}
        for i, name in enumerate(block.reductions):
            np.testing.assert_allclose(block.values[i], reference[name], rtol=1e-6)
    assert [(a.step, a.cleared) for a in run.alerts] == [(ALERT_STEP, False), (CLEARED_STEP, True)]
    assert run.step_count == STEPS and run.skipped_steps == 0

    # What `check` reads: summarized steps counted, not kept.
    light, _ = reader.read_run(str(tmp_path), keep_summarized_steps=False)
    assert light.step_count == STEPS and light.skipped_steps > 150
    kept = [s.step for s in light.steps]
    assert kept[:AFTER] == list(range(AFTER)) and kept == sorted(set(kept))
    assert all(len(s.layers) for s in light.steps if s.step >= AFTER + BLOCK)
    assert len(light.history) == len(run.history)


def test_on_disk_size_is_bounded(tmp_path):
    write_long_run(tmp_path / "long")
    writer = RunWriter(str(tmp_path / "full"), LAYERS, history_after=None)
    for step in range(STEPS):
        writer.write_step(step, row(step), glob(step), wall_time=1000.0 + step)
    writer.close()

    def size(name):
        folder = tmp_path / name
        return sum(os.path.getsize(folder / f) for f in os.listdir(folder))

    # 200 of 300 steps are past history_after: 6 blocks of them kept, 14 summarized
    # (plus summaries of 4 of the kept ones): fewer bytes, though this model is tiny.
    assert size("long") < 0.85 * size("full")
    full_run, _ = reader.read_run(str(tmp_path / "full"))
    assert all(len(s.layers) for s in full_run.steps) and not full_run.history


def test_sparse_blocks_are_written_as_rows(tmp_path):
    # Logged every 5th step: a block of 10 steps holds 2 rows, fewer than a summary.
    write_long_run(tmp_path, steps=range(0, STEPS, 5))
    run, _ = reader.read_run(str(tmp_path))
    assert not run.history
    assert [s.step for s in run.steps if len(s.layers)] == list(range(0, STEPS, 5))


def test_histograms_are_thinned_in_summarized_blocks_and_kept_around_alerts(tmp_path):
    write_long_run(tmp_path, histogram_every=5)
    from tensorboard.backend.event_processing import event_file_loader

    steps = []
    for name in sorted(os.listdir(tmp_path)):
        for event in event_file_loader.EventFileLoader(str(tmp_path / name)).Load():
            steps += [event.step for v in event.summary.value if v.tag == fmt.TAG_HISTOGRAMS]
    assert steps == sorted(set(steps))  # still strictly increasing
    # Whole: histograms of blocks kept before they ended (the alert's, the
    # cleared record's, the last); a summarized block keeps one histogram
    # per HISTOGRAM_THINNING blocks (blocks kept later do not get theirs back).
    period = BLOCK * history.HISTOGRAM_THINNING
    expected = [s for s in range(0, STEPS, 5)
                if s < AFTER or s // BLOCK in (15, 23, 29) or s % period == 0]
    assert steps == expected


def test_load_returns_the_history_frame(tmp_path):
    pytest.importorskip("pandas")
    import training_health

    write_long_run(tmp_path / "run")
    frames = training_health.load(str(tmp_path))
    assert len(frames.series) == STEPS
    assert sorted(set(frames.layers["step"])) == expected_full_steps()
    hist = frames.history
    assert list(hist.columns[:5]) == ["run", "first_step", "step", "layer", "reduction"]
    assert len(hist) == len(expected_history_blocks()) * len(LAYERS) * len(fmt.HISTORY_REDUCTIONS)
    pick = hist[(hist["first_step"] == 110) & (hist["layer"] == "out") & (hist["reduction"] == "max")]
    assert pick["step"].tolist() == [119]
    assert pick["grad_norm"].tolist() == [np.nanmax([row(s)[1, 0] for s in range(110, 120)])]
    assert len(frames.run("run").history) == len(hist)


def test_check_replays_the_full_resolution_prefix_and_lists_online_alerts(tmp_path):
    write_long_run(tmp_path / "run")
    done = subprocess.run([sys.executable, "-m", "training_health.cli", "check", "--json",
                           str(tmp_path)], capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stderr
    alerts = json.loads(done.stdout)["runs"][0]["alerts"]
    assert [(a["kind"], a["step"], a["layer"]) for a in alerts
            if a["message"] == "m"] == [("dead_units", ALERT_STEP, "conv")]
    text = subprocess.run([sys.executable, "-m", "training_health.cli", "check", str(tmp_path)],
                          capture_output=True, text=True, check=False).stdout
    assert "layer rows from step %d on are summarized" % AFTER in text
    assert "(%d steps)" % STEPS in text


def test_matrix_route_draws_summarized_blocks_at_their_last_step(tmp_path):
    from test_plugin_backend import get_json, make_client

    write_long_run(tmp_path / "run")
    client, _ = make_client(tmp_path)
    column = fmt.LAYER_STATS.index("grad_norm")
    for reduce, fn in (("mean", np.nanmean), ("min", np.nanmin), ("max", np.nanmax)):
        body = get_json(client, "/matrix?run=run&stat=grad_norm&width=1000&reduce=" + reduce)
        assert body["first_steps"] == body["last_steps"]  # one sample per column
        steps = body["last_steps"]
        summarized = [b * BLOCK + BLOCK - 1 for b in expected_history_blocks()
                      if b not in KEPT_BLOCKS]
        assert steps == sorted(expected_full_steps() + summarized)
        for step in summarized:
            i = steps.index(step)
            block = np.stack([row(s) for s in range(step - BLOCK + 1, step + 1)])
            np.testing.assert_allclose(body["values"][1][i], fn(block[:, 1, column]), rtol=1e-4)
        i = steps.index(ALERT_STEP)  # kept whole around the alert
        assert body["values"][0][i] == pytest.approx(float(row(ALERT_STEP)[0, column]), rel=1e-4)
    layer = get_json(client, "/layer?run=run&layer=out&width=1000")
    assert layer["last_steps"] == steps
    assert (layer["summarized_from"], layer["history_block"]) == (AFTER, BLOCK)
    assert get_json(client, "/layers?run=run")["last_step"] == STEPS - 1


@pytest.mark.parametrize("options, message", [
    (dict(history_after=-1), "history_after"),
    (dict(history_after=1.5), "history_after"),
    (dict(history_block=1), "history_block"),
    (dict(history_block=True), "history_block"),
])
def test_bad_history_options_are_clear_value_errors(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        RunWriter(str(tmp_path), LAYERS, **options)
    torch = pytest.importorskip("torch")
    from training_health.torch import HealthMonitor

    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=message):
        HealthMonitor(str(tmp_path), model, torch.optim.SGD(model.parameters(), 0.1), **options)


def test_pytorch_monitor_writes_history_blocks(tmp_path):
    torch = pytest.importorskip("torch")
    from training_health.torch import HealthMonitor

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), 0.05)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    with HealthMonitor(str(tmp_path), model, optimizer, history_after=20, history_block=10,
                       detectors=None, flush_every=8) as monitor:
        for _ in range(60):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            monitor.step(loss)
    run, _ = reader.read_run(str(tmp_path))
    assert len(run.steps) == 60
    steps = [s.step for s in run.steps]
    last_block = steps[-1] // 10
    # Steps before 20 in full; then every finished block of 10 summarized;
    # the last two blocks whole (written at close).
    assert [b.first_step for b in run.history] == sorted(
        {s // 10 * 10 for s in steps if 20 <= s < last_block * 10})
    assert [s.step for s in run.steps if len(s.layers)] == [
        s for s in steps if s < 20 or s // 10 >= last_block - 1]
    assert len(run.history) >= 3


def test_a_live_long_run_reports_its_newest_layer_step(tmp_path):
    """While the run trains, its newest layer data is a block summary (the
    last blocks are written whole only at close): the layers route says so."""
    from test_plugin_backend import get_json, make_client

    writer = RunWriter(str(tmp_path / "run"), LAYERS, history_after=AFTER, history_block=BLOCK)
    for step in range(STEPS):
        writer.write_step(step, row(step), glob(step), wall_time=1000.0 + step)
    writer.flush()
    try:
        client, _ = make_client(tmp_path)
        # Block 28 (280..289) was summarized when step 290 came; 290..299 wait in memory.
        assert get_json(client, "/layers?run=run")["last_step"] == 289
    finally:
        writer.close()
