"""Which layer rows of a long run are written at full resolution.

A deep model logged every batch writes about 8 KB of layer statistics a
step (150 layers x 14 float32): 8 GB per million steps. `LayerHistory`
bounds that without changing what the detectors see (they run on every
step before anything is written):

* the first `after` steps are written at full resolution (most failures
  show early, and short runs are never downsampled);
* after that, steps go in blocks of `block` steps (aligned: block `b` holds
  steps b*block .. (b+1)*block - 1). A finished block is written as one
  history value, each column's min, mean and max over the block
  (`format.HISTORY_REDUCTIONS`), unless it is kept at full resolution;
* a block in which an alert was raised (or cleared), the block before it,
  and the last two blocks of the run (written at `close`) are kept at full
  resolution: the evidence around every alert and the recent steps stay
  exact (rows kept because of a later alert are written after the global
  series of their steps: a reader merges the two tags by step);
* a block of at most `len(HISTORY_REDUCTIONS)` logged steps is written as
  its rows, which are smaller than its summary;
* histograms of summarized blocks are thinned to one per
  `HISTOGRAM_THINNING` blocks.

Only layer rows and histograms go through here; the global series (loss,
...) and the alerts are written at every step. The current and the previous
block wait in memory: a process killed mid-run loses at most the current
block's layer rows.

This module decides; `RunWriter` writes. Nothing here does I/O.
"""

import warnings

import numpy as np

from training_health import format as fmt

HISTORY_AFTER = 10_000  # steps written at full resolution before blocks start
HISTORY_BLOCK = 100  # steps per history block
HISTOGRAM_THINNING = 10  # summarized blocks per kept histogram


def check_history(history_after, history_block):
    """Validates the two options (see `HealthCallback`)."""
    if history_after is not None and (isinstance(history_after, bool)
                                      or not isinstance(history_after, int) or history_after < 0):
        raise ValueError(
            "`history_after` must be an integer >= 0 (steps written at full resolution before "
            "history blocks start) or None (every step at full resolution); received %r"
            % (history_after,))
    if isinstance(history_block, bool) or not isinstance(history_block, int) or history_block < 2:
        raise ValueError("`history_block` must be an integer >= 2 (steps per history block); "
                         "received %r" % (history_block,))


def summarize(rows):
    """[len(HISTORY_REDUCTIONS), L, S] reductions of rows [n, L, S] over n,
    ignoring NaN (NaN only where every row is NaN)."""
    rows = np.asarray(rows, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
        reduced = {
            "min": np.fmin.reduce(rows, axis=0),
            "mean": np.nanmean(rows, axis=0),
            "max": np.fmax.reduce(rows, axis=0),
        }
    return np.stack([reduced[name] for name in fmt.HISTORY_REDUCTIONS]).astype(np.float32)


class _Block:
    def __init__(self, index):
        self.index = index
        self.rows = []  # (step, layer_values, wall_time)
        self.histograms = []  # (step, values, wall_time)
        self.kept = False  # written (or to be written) at full resolution
        self.rows_written = 0  # rows of this block already written in full


class LayerHistory:
    """Decides what of a step stream is written; returns it as writes.

    Every method returns a list of writes, in order, each a tuple:
    ("layers", step, layer_values, wall_time) -- a full row;
    ("history", step, summary, wall_time) -- a block's summary;
    ("histograms", step, values, wall_time).

    Args:
        after: steps before this are written at full resolution, as are all
            steps when None. Rounded up to a multiple of `block`.
        block: steps per history block.
    """

    def __init__(self, after=HISTORY_AFTER, block=HISTORY_BLOCK):
        check_history(after, block)
        self.block = block
        self.start = None if after is None else -(-after // block) * block
        self._previous = None
        self._current = None
        self._last_histogram = None  # step of the last histogram written
        self._last_thinned = None  # thinning period of the last histogram of a summary

    def _index(self, step):
        if self.start is None or step < self.start:
            return None
        return step // self.block

    def add_step(self, step, layer_values, wall_time):
        index = self._index(step)
        if index is None:
            return [("layers", step, layer_values, wall_time)]
        out = []
        if self._current is None or index != self._current.index:
            out += self._finish_current()
            self._current = _Block(index)
        self._current.rows.append((step, layer_values, wall_time))
        if self._current.kept:
            out += self._write_rows(self._current)
        return out

    def add_alerts(self, step):
        """An alert record at `step`: its block and the one before are kept."""
        current = self._current
        index = self._index(step)
        if current is None or index is None:
            return []
        if index == current.index:
            return self._keep_current_whole()
        if index == current.index - 1:
            return self._previous_rows()
        return []

    def add_histograms(self, step, values, wall_time):
        index = self._index(step)
        if index is None:
            return self._histogram(step, values, wall_time)
        current = self._current
        if current is not None and index == current.index and not current.kept:
            current.histograms.append((step, values, wall_time))
            return []
        kept = (current is not None and index == current.index) or (
            self._previous is not None and index == self._previous.index and self._previous.kept)
        if kept:
            return self._histogram(step, values, wall_time)
        return self._thinned(step, values, wall_time)

    def close(self):
        """Everything still held, the last two blocks at full resolution."""
        out = self._keep_current_whole() if self._current is not None else []
        self._previous = self._current
        self._current = None
        return out

    def _previous_rows(self):
        """The previous block's rows, when it is the block right before the
        current one and the current one has written none (rows only
        increase)."""
        previous, current = self._previous, self._current
        if previous is None or previous.index != current.index - 1 or current.rows_written:
            return []
        return self._write_rows(previous)

    def _keep_current_whole(self):
        """Marks the current block kept: writes the previous block's rows,
        its own so far and the histograms it held back."""
        current = self._current
        current.kept = True
        out = self._previous_rows() + self._write_rows(current)
        for step, values, wall_time in current.histograms:
            out += self._histogram(step, values, wall_time)
        current.histograms = []
        return out

    def _finish_current(self):
        block = self._current
        if block is None:
            return []
        out = []
        if block.kept or len(block.rows) <= len(fmt.HISTORY_REDUCTIONS):
            out += self._write_rows(block)
            for step, values, wall_time in block.histograms:
                out += self._histogram(step, values, wall_time)
        else:
            summary = summarize([row[1] for row in block.rows])
            last_step, _, wall_time = block.rows[-1]
            out.append(("history", last_step, summary, wall_time))
            for step, values, hist_wall in block.histograms:
                out += self._thinned(step, values, hist_wall)
        block.histograms = []
        self._previous = block
        return out

    def _write_rows(self, block):
        fresh = block.rows[block.rows_written:]
        block.rows_written = len(block.rows)
        return [("layers",) + row for row in fresh]

    def _histogram(self, step, values, wall_time):
        if self._last_histogram is not None and step <= self._last_histogram:
            return []  # steps only increase per tag
        self._last_histogram = step
        return [("histograms", step, values, wall_time)]

    def _thinned(self, step, values, wall_time):
        period = step // (self.block * HISTOGRAM_THINNING)
        if period == self._last_thinned:
            return []
        self._last_thinned = period
        return self._histogram(step, values, wall_time)
