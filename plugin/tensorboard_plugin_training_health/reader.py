"""Reads Training Health data through TensorBoard's data provider.

Everything goes through `context.data_provider` (`list_tensors` and
`read_tensors` with `plugin_name=format.PLUGIN_NAME`), so the plugin works
with both backends (`--load_fast=true` and `false`). Stacked arrays are
cached per (experiment, run, tag) and reused until the tag's newest step or
wall time changes, so a warm server answers from memory.
"""

import collections
import threading

import numpy as np
from tensorboard import errors
from tensorboard.data import provider

from training_health import format as fmt

class UnreadableDataError(errors.PublicError):
    """Logs this version of the plugin cannot read (e.g. a newer format): HTTP 400."""

    http_code = 400

    def __init__(self, details):
        super().__init__("cannot read these logs: %s" % details)


# The most values asked of the data provider per read. Bounds the memory and
# the gRPC message of one read under `--load_fast` (TensorBoard's channel
# accepts 256 MiB; 20000 matrices of 50 x 14 floats are 56 MB).
MAX_READ = 20000


class Series:
    """One tag of one run, stacked.

    Attributes:
        steps: int64 array [N], increasing.
        values: numpy array [N, ...] (the tag's value per step), or a list
            of per-step values for string tags.
        metadata: the parsed plugin metadata of the tag (a dict).
        downsampled: True when TensorBoard or this reader kept fewer values
            than were logged.
        limit: the sample limit that applied (0 = none known).
        summarized_from: for layer matrices of a long run, the first step
            whose layer rows may be block summaries (`Reader.read_layers`);
            None otherwise.
        history_block: steps per summarized block, or None.
    """

    def __init__(self, steps, values, metadata, downsampled, limit, summarized_from=None,
                 history_block=None):
        self.steps = steps
        self.values = values
        self.metadata = metadata
        self.downsampled = downsampled
        self.limit = limit
        self.summarized_from = summarized_from
        self.history_block = history_block

    @property
    def nbytes(self):
        size = self.steps.nbytes
        return size + (self.values.nbytes if isinstance(self.values, np.ndarray) else 0)


class Reader:
    """Lists and reads this plugin's tags through a data provider.

    Args:
        data_provider: a `tensorboard.data.provider.DataProvider`.
        sample_limit: samples TensorBoard keeps per tag for this plugin (the
            effective `--samples_per_plugin` value; 0 keeps all), used to say
            whether data is downsampled. Defaults to 0 (unknown).
        cache_bytes: the most bytes of stacked arrays kept between requests.
            Defaults to 512 MiB.
    """

    def __init__(self, data_provider, sample_limit=0, cache_bytes=512 << 20):
        if data_provider is None:
            raise ValueError(
                "Training Health reads through TensorBoard's data provider; "
                "received data_provider=None (use a TensorBoard with a data provider)"
            )
        self._provider = data_provider
        self.sample_limit = int(sample_limit or 0)
        self._cache_bytes = int(cache_bytes)
        self._cache = collections.OrderedDict()  # key -> (version, Series)
        self._lock = threading.Lock()

    def list_runs(self, ctx, experiment_id):
        """{run: {tag: TensorTimeSeries}} for runs holding any of our tags."""
        listing = self._provider.list_tensors(
            ctx, experiment_id=experiment_id, plugin_name=fmt.PLUGIN_NAME
        )
        return {run: tags for run, tags in listing.items() if set(tags) & set(fmt.TAGS)}

    def time_series(self, ctx, experiment_id, run, tag):
        """The TensorTimeSeries of one tag; NotFoundError if absent."""
        listing = self._provider.list_tensors(
            ctx,
            experiment_id=experiment_id,
            plugin_name=fmt.PLUGIN_NAME,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]),
        )
        if tag in listing.get(run, {}):
            return listing[run][tag]
        if run not in self.list_runs(ctx, experiment_id):
            raise errors.NotFoundError("no Training Health data for run %r" % (run,))
        raise errors.NotFoundError("run %r has no %r data" % (run, tag))

    def metadata(self, time_series):
        """Parsed plugin metadata; UnreadableDataError for unknown versions."""
        try:
            return fmt.parse_metadata(time_series.plugin_content)
        except fmt.FormatError as e:
            raise UnreadableDataError(str(e)) from e

    def read(self, ctx, experiment_id, run, tag):
        """The Series of one tag, from the cache when nothing new arrived."""
        time_series = self.time_series(ctx, experiment_id, run, tag)
        version = (time_series.max_step, time_series.max_wall_time, time_series.plugin_content)
        key = (experiment_id, run, tag)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == version:
                self._cache.move_to_end(key)
                return hit[1]
        series = self._load(ctx, experiment_id, run, tag, time_series)
        with self._lock:
            self._cache[key] = (version, series)
            self._cache.move_to_end(key)
            self._evict()
        return series

    def read_layers(self, ctx, experiment_id, run, reduce="mean"):
        """The layer matrices of `run` over every step that has one: the
        full-resolution rows, and for a long run's stretches that were
        summarized (`format.TAG_LAYER_HISTORY`) each block's `reduce`
        (min, mean or max) at the block's last step. A block is left out
        where full rows of its steps exist (they were kept around an alert).
        """
        full = self.read(ctx, experiment_id, run, fmt.TAG_LAYERS)
        listing = self._provider.list_tensors(
            ctx, experiment_id=experiment_id, plugin_name=fmt.PLUGIN_NAME,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[fmt.TAG_LAYER_HISTORY]))
        if fmt.TAG_LAYER_HISTORY not in listing.get(run, {}):
            return full
        history = self.read(ctx, experiment_id, run, fmt.TAG_LAYER_HISTORY)
        key = (experiment_id, run, fmt.TAG_LAYER_HISTORY, reduce)
        version = tuple((len(x.steps), int(x.steps[-1]) if len(x.steps) else -1)
                        for x in (full, history))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == version:
                return hit[1]
        merged = _merge_history(full, history, reduce)
        with self._lock:
            self._cache[key] = (version, merged)
            self._evict()
        return merged

    def _evict(self):
        total = sum(entry[1].nbytes for entry in self._cache.values())
        while total > self._cache_bytes and len(self._cache) > 1:
            _, (_, series) = self._cache.popitem(last=False)
            total -= series.nbytes

    def _load(self, ctx, experiment_id, run, tag, time_series):
        metadata = self.metadata(time_series)
        data = self._provider.read_tensors(
            ctx,
            experiment_id=experiment_id,
            plugin_name=fmt.PLUGIN_NAME,
            downsample=MAX_READ,
            run_tag_filter=provider.RunTagFilter(runs=[run], tags=[tag]),
        )
        datums = sorted(data.get(run, {}).get(tag, []), key=lambda d: d.step)
        limit = self.sample_limit if self.sample_limit > 0 else MAX_READ
        limit = min(limit, MAX_READ)
        downsampled = len(datums) >= limit
        steps = np.array([d.step for d in datums], dtype=np.int64)
        if tag in (fmt.TAG_ALERTS, fmt.TAG_EPOCHS):  # string tags: one JSON list per step
            return Series(steps, [d.numpy for d in datums], metadata, downsampled, limit)
        expected = _expected_shape(tag, metadata)
        arrays = [d.numpy for d in datums]
        if expected is None and arrays:
            expected = arrays[-1].shape
        keep = [i for i, a in enumerate(arrays) if a.shape == expected]
        if len(keep) != len(arrays):
            steps = steps[keep]
            arrays = [arrays[i] for i in keep]
        if arrays:
            values = np.stack(arrays).astype(np.float32, copy=False)
        else:
            values = np.zeros((0,) + tuple(expected or ()), dtype=np.float32)
        return Series(steps, values, metadata, downsampled, limit)


def _merge_history(full, history, reduce):
    meta = history.metadata
    reductions = list(meta.get("reductions", ()))
    same_layers = [i.name for i in meta.get("layers", ())] == [
        i.name for i in full.metadata["layers"]]
    if (reduce not in reductions or not same_layers
            or list(meta.get("stats", ())) != list(full.metadata["stats"]) or not len(history.steps)):
        return full
    block = int(meta["block"])
    first = np.array([fmt.history_block_first_step(s, block) for s in history.steps], dtype=np.int64)
    # A block is covered when a full row lies in [first, last step].
    position = np.searchsorted(full.steps, first, side="left")
    covered = (position < len(full.steps)) & (
        full.steps[np.minimum(position, len(full.steps) - 1)] <= history.steps)
    use = ~covered
    steps = np.concatenate([full.steps, history.steps[use]])
    values = np.concatenate([full.values, history.values[use, reductions.index(reduce)]])
    order = np.argsort(steps, kind="stable")
    return Series(steps[order], values[order], full.metadata,
                  full.downsampled or history.downsampled, full.limit,
                  summarized_from=int(first[0]), history_block=block)


def _expected_shape(tag, metadata):
    if tag == fmt.TAG_LAYER_HISTORY:
        return (len(metadata.get("reductions", ())), len(metadata.get("layers", ())),
                len(metadata.get("stats", ())))
    if tag == fmt.TAG_LAYERS:
        return (len(metadata.get("layers", ())), len(metadata.get("stats", ())))
    if tag == fmt.TAG_GLOBAL:
        return (len(metadata.get("stats", ())),)
    if tag == fmt.TAG_HISTOGRAMS:
        return (len(metadata.get("layers", ())), len(fmt.HIST_SERIES), fmt.HIST_ROW)
    return None
