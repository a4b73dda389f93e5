"""Reads Training Health event files back into per-step records, every step.

TensorBoard's own readers keep a sample of each tag; the CLI and the
detectors need every logged step, so this module reads the event files
directly:

- a run is a directory holding event files with our tags; its files are
  read in name order (the writer's names start with the creation time and
  sort in writing order) as one sequence;
- local paths are read as plain files, URLs (``s3://``, ``gs://``,
  ``memory://`` ...) through fsspec (`training_health.io.remote`);
- TFRecord framing is parsed here, with both CRCs checked, so that a last
  record still being written (truncated) is simply left for the next poll
  and an empty file is just empty. TensorBoard's `EventFileLoader` does
  that too, but it imports TensorFlow whenever TensorFlow is installed
  (seconds of start-up, and `training-health check` promises not to), and
  it stops reading a file at its first damaged record;
- damaged bytes (flipped bits, a bad length, garbage between records) are
  skipped up to the next valid record, with one warning naming the file
  and the offset, and so is a value that does not match its metadata:
  everything readable is returned;
- `RunReader.poll()` returns only what is new since the last poll, for
  live views (`training-health watch`).

Non-finite values are returned as they were logged (NaN/Inf). Metadata with
an unknown format version raises `format.UnknownVersionError`.
"""

import dataclasses
import logging
import os
import re
import struct

import numpy as np
from google.protobuf import message
from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util

from training_health import format as fmt
from training_health.io import remote
from training_health.io import crc32c
from training_health.io.crc32c import masked_crc32c
from training_health.records import Alert, EpochStats, StepStats

log = logging.getLogger("training_health")

_HEADER = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_TIMESTAMP = re.compile(r"tfevents\.(\d+)")
_DIGITS = re.compile(r"(\d+)")


@dataclasses.dataclass
class Update:
    """What one `RunReader.poll()` found.

    Attributes:
        steps: new `records.StepStats`, in the order logged.
        alerts: new alerts logged by the training process (`records.Alert`,
            raised and cleared records alike), in the order logged.
        wall_times: {step: wall time (seconds since the epoch)} of the new
            steps, as written by the logger.
        late_rows: layer rows (`records.StepStats` without global values)
            of steps already returned without them: a long run writes the
            rows it keeps around an alert after the steps' global values
            (`io.history`). `read_run` merges them into its steps.
        history: new `HistoryBlock`s of a long run, in step order.
        epochs: new finished epochs (`records.EpochStats`), in the order
            logged.
    """

    steps: list
    alerts: list
    wall_times: dict = dataclasses.field(default_factory=dict)
    late_rows: list = dataclasses.field(default_factory=list)
    history: list = dataclasses.field(default_factory=list)
    epochs: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class HistoryBlock:
    """One block of a long run's layer history (`format.TAG_LAYER_HISTORY`).

    Attributes:
        first_step: the first step the block covers.
        step: the block's last logged step.
        layers: tuple of LayerInfo, one per row.
        stats: tuple of column names.
        reductions: names of the first axis of `values` (min, mean, max).
        values: float32 array [len(reductions), len(layers), len(stats)].
    """

    first_step: int
    step: int
    layers: tuple
    stats: tuple
    reductions: tuple
    values: np.ndarray


@dataclasses.dataclass
class RunData:
    """Everything read from one run.

    A long run's steps whose layer rows were summarized (`io.history`) are
    in `steps` with their global values and no layers; their summaries are
    in `history`.

    Attributes:
        name: the run's name (its directory relative to the logdir, "." for
            the logdir itself).
        path: the run's directory or URL.
        steps: every logged `records.StepStats`, in order.
        alerts: every logged `records.Alert`, in order.
        wall_times: {step: wall time (seconds since the epoch)} of the
            steps, as written by the logger. Defaults to empty.
        history: `HistoryBlock`s in step order. Defaults to empty.
        skipped_steps: steps read but not kept in `steps` (summarized steps
            of a long run read with `keep_summarized_steps=False`).
            Defaults to 0.
        epochs: every finished epoch (`records.EpochStats`), in order.
            Defaults to empty (a run logged without epochs).
    """

    name: str
    path: str
    steps: list
    alerts: list
    wall_times: dict = dataclasses.field(default_factory=dict)
    history: list = dataclasses.field(default_factory=list)
    skipped_steps: int = 0
    epochs: list = dataclasses.field(default_factory=list)

    @property
    def step_count(self):
        """Every logged step read, kept in `steps` or not."""
        return len(self.steps) + self.skipped_steps


@dataclasses.dataclass(frozen=True)
class Damage:
    """Bytes of an event file that hold no valid record and were skipped.

    Attributes:
        path: the file.
        start: offset of the first skipped byte.
        end: offset where reading resumed (the next valid record).
    """

    path: str
    start: int
    end: int

    def message(self):
        return ("skipped %d damaged bytes at byte %d of %s (no valid record there); "
                "reading resumes at byte %d" % (self.end - self.start, self.start, self.path, self.end))


def _record_at(data, pos):
    """What starts at `pos`: (stop, body) for a whole valid record, (None,
    None) for a valid header whose record is not all there yet, or None
    when no valid record starts there."""
    end = len(data)
    if end - pos < _HEADER.size + _CRC.size:
        return None, None  # too short to tell: maybe a record being written
    header = data[pos:pos + _HEADER.size]
    (length_crc,) = _CRC.unpack_from(data, pos + _HEADER.size)
    if masked_crc32c(header) != length_crc:
        return None
    (length,) = _HEADER.unpack(header)
    start = pos + _HEADER.size + _CRC.size
    stop = start + length
    if stop + _CRC.size > end:
        return None, None  # truncated: the writer has not finished this record yet
    body = data[start:stop]
    (body_crc,) = _CRC.unpack_from(data, stop)
    if masked_crc32c(body) != body_crc:
        return None
    return stop + _CRC.size, body


def split_records(data, path="<bytes>", offset=0):
    """Splits TFRecord-framed bytes into records, skipping damaged bytes.

    Where no valid record starts (a checksum that does not match: flipped
    bytes, a bad length, garbage between records), the bytes up to the
    next position where a valid record starts are skipped and reported as
    a `Damage`. A valid record is one whose length and data checksums both
    match. A record that is not all there yet (a valid length whose data
    runs past the end of `data`) is left unconsumed: the writer may still
    be appending it.

    Args:
        data: the bytes of an event file from some record boundary on.
        path: the file's name, for messages. Defaults to "<bytes>".
        offset: where `data` starts in the file, for messages. Defaults to 0.

    Returns:
        (records, consumed, damage): the complete valid records, how many
        bytes of `data` they and the skipped bytes span, and a list of
        `Damage` (empty for an undamaged file).
    """
    records, damage = [], []
    pos = 0
    while True:
        found = _record_at(data, pos)
        if found is not None:
            stop, body = found
            if stop is None:
                return records, pos, damage  # wait for the rest
            records.append(body)
            pos = stop
            continue
        # Damaged: resume at the next position where a valid record (or a
        # valid header of one still being written) starts.
        bad = pos
        pos += 1
        while _record_at(data, pos) is None:
            pos += 1
        damage.append(Damage(path, offset + bad, offset + pos))


def _file_order(path):
    """Sort key of an event file: creation time, then its name in natural order.

    Natural order compares digit runs as numbers, so a writer's tenth file
    (".10.") sorts after its ninth (".9.").
    """
    name = path.rstrip("/").rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1]
    match = _TIMESTAMP.search(name)
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _DIGITS.split(name) if p)
    return (int(match.group(1)) if match else 0, parts)


def list_runs(logdir, storage_options=None):
    """Directories under `logdir` that hold event files.

    Args:
        logdir: local directory or URL.
        storage_options: fsspec options for URLs (see `remote.filesystem`).
            Defaults to None.

    Returns:
        dict run name -> run path (directory or URL), sorted by name. Whether
        a run holds Training Health data is known only once it is read.

    Raises:
        FileNotFoundError: `logdir` does not exist.
    """
    found = remote.list_event_files(logdir, storage_options)
    return {name: remote.join(logdir, name) if name != "." else str(logdir)
            for name in sorted(found)}


class RunReader:
    """Reads one run incrementally: each `poll()` returns only new data.

    Args:
        path: the run's directory (local path or URL).
        name: the run's name in messages. Defaults to `path`.
        storage_options: fsspec options for URLs. Defaults to None.
        keep_summarized_steps: False leaves out (and counts in
            `skipped_steps`) the steps of a long run whose layer rows were
            summarized: steps without layer rows from its first history
            block on, and layer rows that arrive after their step. What
            `check` does not replay, in a fraction of the memory. Defaults
            to True.

    Attributes:
        has_data: True once any Training Health value was read.
        layers: LayerInfo tuple of the newest layer metadata (or None).
        metric_names: compiled metric names of the newest global metadata.
        skipped: messages about data that was skipped (damaged bytes,
            records that are not events, values that do not match their
            metadata or arrived without it), each also logged once as a
            warning.
    """

    def __init__(self, path, name=None, storage_options=None, keep_summarized_steps=True):
        self.path = str(path)
        self.keep_summarized_steps = keep_summarized_steps
        self.skipped_steps = 0
        self._history_from = None  # first step of the first history block read
        self.name = name if name is not None else self.path
        self.storage_options = storage_options
        self._offsets = {}  # file -> bytes consumed (always a record boundary)
        self._metadata = {}  # tag -> parsed metadata dict
        self._pending = {}  # step -> {"layers": array, "global": array}
        self._step_wall_times = {}  # step -> wall time, until the step is returned
        self._newest = None  # newest step returned (or skipped)
        self.has_data = False
        self.skipped = []

    @property
    def layers(self):
        meta = self._metadata.get(fmt.TAG_LAYERS)
        return tuple(meta["layers"]) if meta else None

    @property
    def frozen_unmonitored(self):
        """Names of the model's frozen layers that were not monitored (from
        the newest layer metadata; empty when none or not said)."""
        meta = self._metadata.get(fmt.TAG_LAYERS)
        return tuple(str(n) for n in meta.get("frozen_unmonitored", ())) if meta else ()

    @property
    def metric_names(self):
        meta = self._metadata.get(fmt.TAG_GLOBAL)
        return tuple(meta["stats"][len(fmt.GLOBAL_STATS):]) if meta else ()

    def _files(self):
        try:
            found = remote.list_event_files(self.path, self.storage_options)
        except FileNotFoundError:
            return []  # not created yet: a live view may start before training
        return sorted(found.get(".", []), key=_file_order)

    def poll(self, final=False):
        """Reads what was appended since the last poll.

        Args:
            final: also return a step whose second half (layer matrix or
                global vector) has not been seen yet. Use it for a last read
                of a finished run. Defaults to False: such a step waits for
                the next poll.

        Returns:
            An `Update` (empty while the run directory does not exist yet).

        Raises:
            format.UnknownVersionError: metadata of a newer format version.
            OSError: a file could not be read.
        """
        steps, alerts, late, history, epochs = [], [], [], [], []
        for path in self._files():
            offset = self._offsets.get(path, 0)
            data = remote.read_bytes(path, offset, self.storage_options)
            if not data:
                continue
            records, consumed, damage = split_records(data, path, offset)
            self._offsets[path] = offset + consumed
            for found in damage:
                self._skip(found.message())
            for record in records:
                try:
                    event = event_pb2.Event.FromString(record)
                except message.DecodeError as e:
                    self._skip("%s: a record of %s is not an event (%s); skipped" % (self.name, path, e))
                    continue
                self._read_event(event, steps, alerts, late, history, epochs)
        if final:
            self._emit(steps, self._flush_pending(None))
        wall_times = {s.step: self._step_wall_times.pop(s.step) for s in steps
                      if s.step in self._step_wall_times}
        return Update(steps, alerts, wall_times, late, history, epochs)

    def _read_event(self, event, steps, alerts, late, history, epochs):
        if not event.HasField("summary"):
            return
        for value in event.summary.value:
            meta = self._metadata_for(value, event.step)
            if meta is None:
                continue
            self.has_data = True
            tag = value.tag
            if tag == fmt.TAG_ALERTS:
                alerts.extend(self._alerts(value, event.step))
                continue
            if tag == fmt.TAG_LAYER_HISTORY:
                block = self._history_block(value, meta, int(event.step))
                if block is not None:
                    history.append(block)
                    if self._history_from is None:
                        self._history_from = block.first_step
                continue
            if tag == fmt.TAG_EPOCHS:
                epochs.extend(self._epoch(value, event.step))
                continue
            if tag not in (fmt.TAG_LAYERS, fmt.TAG_GLOBAL):
                continue  # histograms: not needed by the detectors
            step = int(event.step)
            array = self._checked_value(value, meta, step)
            if array is None:
                continue
            if tag == fmt.TAG_LAYERS and self._newest is not None and step <= self._newest:
                if self.keep_summarized_steps:
                    late.append(self._step(step, {"layers": (array, meta)}))
                continue
            self._step_wall_times[step] = float(event.wall_time)
            self._emit(steps, self._flush_pending(step))
            slot = self._pending.setdefault(step, {})
            slot["layers" if tag == fmt.TAG_LAYERS else "global"] = (array, meta)
            if "layers" in slot and "global" in slot:
                self._emit(steps, [self._step(step, self._pending.pop(step))])

    def _emit(self, steps, new):
        if new:
            self._newest = new[-1].step
        if self.keep_summarized_steps or self._history_from is None:
            steps.extend(new)
            return
        for stats in new:
            if len(stats.layers) or stats.step < self._history_from:
                steps.append(stats)
            else:
                self.skipped_steps += 1
                self._step_wall_times.pop(stats.step, None)

    def _history_block(self, value, meta, step):
        array = self._checked_value(value, meta, step)
        if array is None:
            return None
        try:
            first = fmt.history_block_first_step(step, meta["block"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            self._skip("%s: history metadata has no valid block size (%s); skipped" % (self.name, e))
            return None
        return HistoryBlock(first, step, tuple(meta["layers"]), tuple(meta["stats"]),
                            tuple(meta.get("reductions", ())), array)

    def _checked_value(self, value, meta, step):
        """The float32 array of a layer matrix or global vector, or None
        (skipped, with a warning) when it does not match its metadata."""
        if value.tag == fmt.TAG_LAYER_HISTORY:
            expected = (len(meta.get("reductions", ())), len(meta.get("layers", ())),
                        len(meta.get("stats", ())))
        elif value.tag == fmt.TAG_LAYERS:
            expected = (len(meta.get("layers", ())), len(meta.get("stats", ())))
        else:
            expected = (len(meta.get("stats", ())),)
        try:
            array = np.asarray(tensor_util.make_ndarray(value.tensor), dtype=np.float32)
        except (TypeError, ValueError) as e:
            self._skip("%s: value of %s at step %d is not a float array (%s); skipped"
                       % (self.name, value.tag, step, e))
            return None
        if array.shape != expected:
            self._skip("%s: value of %s at step %d has shape %s; its metadata describes %s; skipped"
                       % (self.name, value.tag, step, array.shape, expected))
            return None
        return array

    def _metadata_for(self, value, step):
        plugin = value.metadata.plugin_data
        if plugin.plugin_name:
            if plugin.plugin_name != fmt.PLUGIN_NAME:
                return None
            try:
                meta = fmt.parse_metadata(plugin.content)
            except fmt.UnknownVersionError:
                raise
            except fmt.FormatError as e:
                self._skip("%s: metadata of %s at step %d is malformed (%s); value skipped"
                           % (self.name, value.tag, step, e))
                return None
            self._metadata[value.tag] = meta
            return meta
        meta = self._metadata.get(value.tag)
        if meta is None and value.tag in fmt.TAGS:
            self._skip("%s: value of %s at step %d has no metadata before it; skipped"
                       % (self.name, value.tag, step))
        return meta

    def _skip(self, text):
        """Notes skipped data: kept in `skipped` and logged once as a warning."""
        if text not in self.skipped:
            self.skipped.append(text)
            log.warning("training_health: %s", text)

    def _alerts(self, value, step):
        try:
            items = fmt.decode_alerts(tensor_util.make_ndarray(value.tensor))
        except (TypeError, ValueError) as e:  # FormatError is a ValueError
            self._skip("%s: alerts at step %d are unreadable (%s); skipped" % (self.name, step, e))
            return []
        out = []
        for item in items:
            try:
                out.append(Alert.from_json(item))
            except (AttributeError, KeyError, TypeError, ValueError) as e:
                self._skip("%s: malformed alert at step %d: %.200r (%s); skipped"
                           % (self.name, step, item, e))
        return out

    def _epoch(self, value, step):
        try:
            epoch, metrics = fmt.decode_epoch(tensor_util.make_ndarray(value.tensor))
        except (TypeError, ValueError) as e:  # FormatError is a ValueError
            self._skip("%s: the epoch at step %d is unreadable (%s); skipped" % (self.name, step, e))
            return []
        return [EpochStats(int(step), epoch, metrics)]

    def _flush_pending(self, before):
        """Emits pending half-steps older than `before` (all if None)."""
        out = []
        for step in sorted(self._pending):
            if before is not None and step >= before:
                break
            out.append(self._step(step, self._pending.pop(step)))
        return out

    def _step(self, step, slot):
        if "layers" in slot:
            array, meta = slot["layers"]
            layers, stats = tuple(meta["layers"]), tuple(meta["stats"])
        else:
            layers, stats = (), tuple(fmt.LAYER_STATS)
            array = np.zeros((0, len(stats)), dtype=np.float32)
        global_values = {}
        if "global" in slot:
            vector, meta = slot["global"]
            global_values = {name: float(v) for name, v in zip(meta["stats"], vector)}
        return StepStats(step, layers, stats, array, global_values)


def read_run(path, name=None, storage_options=None, keep_summarized_steps=True):
    """Every step and logged alert of one run.

    Args:
        keep_summarized_steps: as in `RunReader`. Defaults to True.

    Returns:
        (RunData, has_data): has_data is False when the run's event files
        hold no Training Health data.
    """
    reader = RunReader(path, name, storage_options, keep_summarized_steps)
    update = reader.poll(final=True)
    steps = merge_late_rows(update.steps, update.late_rows)
    return (RunData(reader.name, reader.path, steps, update.alerts, update.wall_times,
                    update.history, reader.skipped_steps, update.epochs),
            reader.has_data)


def merge_late_rows(steps, late_rows):
    """`steps` with the layer rows of `late_rows` put into the steps of the
    same number that have none (a long run's rows kept around an alert)."""
    if not late_rows:
        return steps
    rows = {row.step: row for row in late_rows}
    out = []
    for stats in steps:
        row = rows.get(stats.step)
        if row is not None and not len(stats.layers):
            stats = StepStats(stats.step, row.layers, row.layer_stats, row.layer_values,
                              stats.global_values)
        out.append(stats)
    return out


def read_logdir(logdir, storage_options=None, keep_summarized_steps=True):
    """Every run of `logdir` that holds Training Health data.

    Args:
        logdir: local directory or URL; itself a run, or holding runs.
        storage_options: fsspec options for URLs. Defaults to None.
        keep_summarized_steps: as in `RunReader`. Defaults to True.

    Returns:
        A list of `RunData`, sorted by run name (runs whose event files hold
        none of our tags are left out).

    Raises:
        FileNotFoundError: `logdir` does not exist.
        format.UnknownVersionError: data of a newer format version.
    """
    runs = []
    for name, path in list_runs(logdir, storage_options).items():
        data, has_data = read_run(path, name, storage_options, keep_summarized_steps)
        if has_data:
            runs.append(data)
    return runs


def _is_event(body, path):
    try:
        event_pb2.Event.FromString(body)
        return True
    except message.DecodeError as e:
        log.warning("training_health: a record of %s is not an event (%s); left out", path, e)
        return False


def copy_event_files(logdir, dest, storage_options=None):
    """Copies the event files of `logdir` into the local directory `dest`,
    leaving out damaged bytes and records that are not events (each logged
    as a warning) and a last record that is not complete.

    For readers that stop at the first damaged record of a file, such as
    TensorBoard's own: they read the copy as far as `RunReader` reads the
    original. Runs keep their relative paths.

    Args:
        logdir: local directory or URL.
        dest: local directory to copy into (created).
        storage_options: fsspec options for URLs. Defaults to None.

    Returns:
        `dest`.

    Raises:
        FileNotFoundError: `logdir` does not exist.
        OSError: a file could not be read or written.
    """
    for run, files in remote.list_event_files(logdir, storage_options).items():
        run_dir = dest if run == "." else os.path.join(dest, *run.split("/"))
        os.makedirs(run_dir, exist_ok=True)
        for path in files:
            data = remote.read_bytes(path, 0, storage_options)
            records, consumed, damage = split_records(data, path)
            for found in damage:
                log.warning("training_health: %s", found.message())
            events = [body for body in records if _is_event(body, path)]
            if not damage and len(events) == len(records):
                kept = data[:consumed]
            else:  # framed again: only whole records that are events
                kept = b"".join(crc32c.record(body) for body in events)
            name = path.rsplit("/", 1)[-1] if remote.is_url(path) else os.path.basename(path)
            with open(os.path.join(run_dir, name), "wb") as f:
                f.write(kept)
    return dest

