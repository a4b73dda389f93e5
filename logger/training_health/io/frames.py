"""`training_health.load(path)`: a run's or a logdir's data as pandas DataFrames.

Built on `training_health.io.reader.read_logdir` (the reader of
`training-health check`, `watch` and `report`), so it reads every logged
step of local folders and bucket URLs alike, without TensorFlow. pandas is
an optional extra (``pip install 'training-health[pandas]'``) imported only
when `load` runs.
"""

import dataclasses

import numpy as np

from training_health import format as fmt
from training_health.io import reader

ALERT_COLUMNS = ("kind", "layer", "severity", "message", "hint", "cleared")
LAYER_INFO_COLUMNS = ("type", "activation", "bounds", "units", "has_weights",
                      "has_activation", "is_output", "frozen")


def _pandas():
    try:
        import pandas
    except ImportError as e:
        raise ImportError(
            "training_health.load returns pandas DataFrames, and pandas is not installed "
            "(%s); install it with: pip install 'training-health[pandas]'" % e
        ) from e
    return pandas


@dataclasses.dataclass
class HealthFrames:
    """The Training Health data of one or more runs as DataFrames.

    Every frame has a `run` column (the run's name relative to the logdir,
    "." when `load` was given a run directory itself), so the data of a
    sweep sits in one frame per kind; `frames.run(name)` keeps one run.
    `run` and `layer` are categorical columns (a long table repeats them on
    every row).

    Attributes:
        runs: the run names, sorted (runs without Training Health data are
            left out).
        layers: per-layer statistics in long form: one row per (run, step,
            layer), columns `run`, `step`, `layer`, then one float32 column
            per statistic (`format.LAYER_STATS`, in that order). NaN means
            "not measured" (docs/format.md). Pivot a statistic with
            `layers.pivot_table(index="step", columns="layer", values="dead_frac")`
            on one run.
        series: the global series: one row per (run, step), columns `run`,
            `step`, `wall_time` (seconds since the epoch, as logged), then
            `format.GLOBAL_STATS` (`loss` first) and the compiled metrics,
            float32.
        alerts: every alert record the training process logged, in step
            order per run: columns `run`, `step` (where the evidence became
            conclusive), `kind`, `layer` (None for a model-wide finding),
            `severity`, `message`, `hint`, `cleared` (True for the record
            that closes an episode). `training-health check` also replays
            the detectors over the steps; this frame holds what was logged.
        layer_info: the monitored layers: one row per (run, layer) from the
            run's newest layer metadata, columns `run`, `layer`, then
            `records.LayerInfo`'s fields (`type`, `activation`, `bounds`,
            `units`, `has_weights`, `has_activation`, `is_output`, `frozen`).
        history: a long run's summarized stretches (docs/format.md, "Long
            runs"): one row per (run, block, layer, reduction), columns
            `run`, `first_step`, `step` (the block's last logged step),
            `layer`, `reduction` (`min`, `mean`, `max`), then one float32
            column per statistic. Steps of these blocks are in `series` and
            absent from `layers` unless they were kept whole (around an
            alert). Empty for runs shorter than `history_after` steps.
        epochs: the finished epochs: one row per (run, epoch), columns
            `run`, `step` (the epoch's last training step), `epoch` (from
            1), then `loss` (the epoch's training loss), the other metrics
            reported at epoch ends (training metrics, `val_loss` and the
            other `val_*` when the epoch was validated), float64, NaN where
            an epoch did not report a metric.
    """

    runs: list
    layers: object
    series: object
    alerts: object
    layer_info: object
    history: object
    epochs: object

    def run(self, name):
        """The same frames holding only run `name`.

        Raises:
            KeyError: no run of that name (the message lists the runs).
        """
        if name not in self.runs:
            raise KeyError("no run %r; the runs are %s" % (name, ", ".join(map(repr, self.runs))))
        return HealthFrames(
            [name],
            *[_only(frame, name) for frame in (self.layers, self.series, self.alerts,
                                               self.layer_info, self.history, self.epochs)]
        )


def _only(frame, name):
    out = frame[frame["run"] == name].reset_index(drop=True)
    for column in ("run", "layer"):
        if column in out and hasattr(out[column], "cat"):
            out[column] = out[column].cat.remove_unused_categories()
    return out


def load(path, storage_options=None):
    """Reads one run, or every run of a logdir, into DataFrames.

    Args:
        path: a run directory or a logdir holding runs (local path or URL
            such as ``s3://bucket/exp``).
        storage_options: fsspec options for URLs (see
            `training_health.io.remote.filesystem`). Defaults to None.

    Returns:
        A `HealthFrames` (`runs`, `layers`, `series`, `alerts`,
        `layer_info`, `history`, `epochs`); its frames are empty (with their columns) when no
        run under `path` holds Training Health data.

    Raises:
        ImportError: pandas is not installed (``pip install 'training-health[pandas]'``).
        FileNotFoundError: `path` does not exist.
        format.FormatError: unreadable Training Health data (a corrupt
            record or a newer format version).
    """
    pd = _pandas()
    runs = reader.read_logdir(path, storage_options)
    names = [run.name for run in runs]
    return HealthFrames(
        names,
        _layer_frame(pd, runs, names),
        _series_frame(pd, runs, names),
        _alert_frame(pd, runs, names),
        _layer_info_frame(pd, runs, names),
        _history_frame(pd, runs, names),
        _epoch_frame(pd, runs, names),
    )


def _blocks(steps):
    """Consecutive steps sharing their layers and statistic names, as (start, end)."""
    start = 0
    while start < len(steps):
        first = steps[start]
        end = start + 1
        while (end < len(steps) and steps[end].layers == first.layers
               and steps[end].layer_stats == first.layer_stats):
            end += 1
        yield start, end
        start = end


def _ordered_union(groups, first=()):
    out = dict.fromkeys(first)
    for group in groups:
        out.update(dict.fromkeys(group))
    return list(out)


def _layer_frame(pd, runs, names):
    stats = _ordered_union((s.layer_stats for run in runs for s in run.steps), fmt.LAYER_STATS)
    layer_names = _ordered_union(tuple(info.name for info in s.layers)
                                 for run in runs for s in run.steps)
    layer_code = {name: i for i, name in enumerate(layer_names)}
    run_codes, steps, layers, columns = [], [], [], {stat: [] for stat in stats}
    for run_index, run in enumerate(runs):
        for start, end in _blocks(run.steps):
            block = run.steps[start:end]
            n_layers = len(block[0].layers)
            if not n_layers:
                continue
            values = np.stack([s.layer_values for s in block]).reshape(-1, len(block[0].layer_stats))
            run_codes.append(np.full(len(values), run_index, dtype=np.int32))
            steps.append(np.repeat(np.array([s.step for s in block], dtype=np.int64), n_layers))
            codes = np.array([layer_code[info.name] for info in block[0].layers], dtype=np.int32)
            layers.append(np.tile(codes, len(block)))
            where = {stat: i for i, stat in enumerate(block[0].layer_stats)}
            for stat in stats:
                columns[stat].append(values[:, where[stat]] if stat in where
                                     else np.full(len(values), np.nan, dtype=np.float32))
    frame = {
        "run": _categorical(pd, run_codes, names),
        "step": _concat(steps, np.int64),
        "layer": _categorical(pd, layers, layer_names),
    }
    frame.update((stat, _concat(parts, np.float32)) for stat, parts in columns.items())
    return pd.DataFrame(frame)


def _series_frame(pd, runs, names):
    stats = _ordered_union((s.global_values for run in runs for s in run.steps), fmt.GLOBAL_STATS)
    run_codes, steps, wall_times, rows = [], [], [], []
    for run_index, run in enumerate(runs):
        run_codes.append(np.full(len(run.steps), run_index, dtype=np.int32))
        steps.append(np.array([s.step for s in run.steps], dtype=np.int64))
        wall_times.append(np.array([run.wall_times.get(s.step, np.nan) for s in run.steps],
                                   dtype=np.float64))
        rows.extend([s.global_values.get(stat, np.nan) for stat in stats] for s in run.steps)
    values = np.array(rows, dtype=np.float32).reshape(len(rows), len(stats))
    frame = {
        "run": _categorical(pd, run_codes, names),
        "step": _concat(steps, np.int64),
        "wall_time": _concat(wall_times, np.float64),
    }
    frame.update((stat, values[:, i]) for i, stat in enumerate(stats))
    return pd.DataFrame(frame)


def _alert_frame(pd, runs, names):
    records = [(run_index, alert) for run_index, run in enumerate(runs) for alert in run.alerts]
    frame = {
        "run": _categorical(pd, [np.array([i for i, _ in records], dtype=np.int32)], names),
        "step": np.array([a.step for _, a in records], dtype=np.int64),
    }
    for column in ALERT_COLUMNS:
        values = [getattr(a, column) for _, a in records]
        frame[column] = np.array(values, dtype=bool if column == "cleared" else object)
    return pd.DataFrame(frame)


def _layer_info_frame(pd, runs, names):
    rows = []
    for run in runs:
        with_layers = [s for s in run.steps if s.layers]
        for info in (with_layers[-1].layers if with_layers else ()):
            rows.append([run.name, info.name] + [getattr(info, c) for c in LAYER_INFO_COLUMNS])
    frame = pd.DataFrame(rows, columns=["run", "layer"] + list(LAYER_INFO_COLUMNS))
    frame["run"] = pd.Categorical(frame["run"], categories=names)
    return frame


def _history_frame(pd, runs, names):
    stats = _ordered_union((b.stats for run in runs for b in run.history), fmt.LAYER_STATS)
    layer_names = _ordered_union(tuple(info.name for info in b.layers)
                                 for run in runs for b in run.history)
    reductions = list(fmt.HISTORY_REDUCTIONS)
    layer_code = {name: i for i, name in enumerate(layer_names)}
    parts = {key: [] for key in ("run", "first_step", "step", "layer", "reduction")}
    columns = {stat: [] for stat in stats}
    for run_index, run in enumerate(runs):
        for block in run.history:
            if list(block.reductions) != reductions:
                continue  # a reduction this version does not know
            n_layers = len(block.layers)
            count = n_layers * len(reductions)
            parts["run"].append(np.full(count, run_index, dtype=np.int32))
            parts["first_step"].append(np.full(count, block.first_step, dtype=np.int64))
            parts["step"].append(np.full(count, block.step, dtype=np.int64))
            codes = np.array([layer_code[info.name] for info in block.layers], dtype=np.int32)
            parts["layer"].append(np.tile(codes, len(reductions)))
            parts["reduction"].append(np.repeat(np.arange(len(reductions), dtype=np.int32), n_layers))
            values = block.values.reshape(count, len(block.stats))
            where = {stat: i for i, stat in enumerate(block.stats)}
            for stat in stats:
                columns[stat].append(values[:, where[stat]] if stat in where
                                     else np.full(count, np.nan, dtype=np.float32))
    frame = {
        "run": _categorical(pd, parts["run"], names),
        "first_step": _concat(parts["first_step"], np.int64),
        "step": _concat(parts["step"], np.int64),
        "layer": _categorical(pd, parts["layer"], layer_names),
        "reduction": _categorical(pd, parts["reduction"], reductions),
    }
    frame.update((stat, _concat(values, np.float32)) for stat, values in columns.items())
    return pd.DataFrame(frame)


def _epoch_frame(pd, runs, names):
    metrics = _ordered_union((e.metrics for run in runs for e in run.epochs), ("loss",))
    records = [(run_index, e) for run_index, run in enumerate(runs) for e in run.epochs]
    frame = {
        "run": _categorical(pd, [np.array([i for i, _ in records], dtype=np.int32)], names),
        "step": np.array([e.step for _, e in records], dtype=np.int64),
        "epoch": np.array([e.epoch for _, e in records], dtype=np.int64),
    }
    for name in metrics:
        frame[name] = np.array([e.metrics.get(name, np.nan) for _, e in records], dtype=np.float64)
    return pd.DataFrame(frame)


def _concat(parts, dtype):
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


def _categorical(pd, code_parts, categories):
    return pd.Categorical.from_codes(_concat(code_parts, np.int32), categories=list(categories))
