"""The host side of a capture (capture/host.py) on a plain Python `RowSource`
whose ring buffer keeps being written while the host reads it, as a device
buffer is while training goes on. No framework needed."""

import numpy as np

from training_health import format as fmt
from training_health.capture import host
from training_health.io import reader
from training_health.io.event_writer import EventWriter
from training_health.io.run_writer import RunWriter
from training_health.records import LayerInfo

LAYERS = (LayerInfo("dense", "Dense", "relu", None, 4, True, True),)
WIDTH = len(fmt.GLOBAL_STATS) + len(LAYERS) * len(fmt.LAYER_STATS)


def row_of(step):
    """Every value of a step's row is its step number: a row read with
    another step's number shows at once."""
    return np.full(WIDTH, float(step), np.float32)


class RacingSource(host.RowSource):
    """A ring buffer of `rows` rows that the training side writes while the
    host reads it: `read_rows` reads the count, the buffer, the steps and
    the count again, and `writes_during_read` rows are written between
    copying the buffer and copying the steps, the last of them only half
    (its step is set, its values are not yet)."""

    global_names = tuple(fmt.GLOBAL_STATS)

    def __init__(self, rows=8, writes_during_read=0):
        self.rows = rows
        self.count = 0
        self.buffer = np.zeros((rows, WIDTH), np.float32)
        self.steps = np.zeros(rows, np.int64)
        self.writes_during_read = writes_during_read

    def train(self, n):
        for _ in range(n):
            slot = self.count % self.rows
            self.steps[slot] = self.count
            self.buffer[slot] = row_of(self.count)
            self.count += 1

    def read_rows(self):
        before = self.count
        buffer = self.buffer.copy()
        self.train(self.writes_during_read - 1)
        slot = self.count % self.rows  # the next row: its step is written, its values not yet
        self.steps[slot] = self.count
        steps = self.steps.copy()
        after = self.count
        self.buffer[slot] = row_of(self.count)  # (the row completes after the read)
        self.count += 1
        return before, buffer, steps, after

    def layer_infos(self):
        return LAYERS


def collect_all(source, logdir, rounds):
    writers = []

    def factory(layer_infos, metric_names):
        writers.append(RunWriter(str(logdir), layer_infos, metric_names,
                                 writer=EventWriter(str(logdir), flush_secs=3600)))
        return writers[0]

    collector = host.RowCollector(source, factory, detectors=None, on_alerts=None)
    for train_steps in rounds:
        source.train(train_steps)
        collector.collect()
    writers[0].close()
    (run,) = reader.read_logdir(logdir)
    return collector, run.steps


def test_rows_overwritten_during_the_read_are_not_written_with_another_steps_number(tmp_path):
    # Near an overflow: 10 rows in a buffer of 8, and 3 more written while the
    # host reads (the last one half), between its copy of the buffer and of
    # the steps.
    source = RacingSource(rows=8, writes_during_read=3)
    collector, steps = collect_all(source, tmp_path / "run", rounds=[10])
    for stats in steps:
        assert stats.global_values["loss"] == stats.step, "row of step %d holds another step's values" % stats.step
    # Row 12 was being written into the slot of row 4: rows 5-9 were whole.
    assert [s.step for s in steps] == [5, 6, 7, 8, 9]
    assert collector.lost_rows == 5


def test_rows_are_all_written_once_when_the_host_keeps_up(tmp_path):
    source = RacingSource(rows=8, writes_during_read=1)
    collector, steps = collect_all(source, tmp_path / "run", rounds=[3, 4, 2, 5])
    assert [s.step for s in steps] == list(range(len(steps)))
    assert len(steps) >= 14 and collector.lost_rows == 0
    for stats in steps:
        assert stats.global_values["loss"] == stats.step
