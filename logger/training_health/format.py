"""The on-disk contract of Training Health: one module owns it.

Everything the logger writes and the plugin / CLI read goes through here:
the plugin name, the tag schema, the format version, and the
``SummaryMetadata`` builders and parsers. See ``docs/format.md``.

Only numpy and TensorBoard's protos are imported: no TensorFlow.
"""

import json

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.util import tensor_util

from training_health.records import LayerInfo

PLUGIN_NAME = "training_health"
FORMAT_VERSION = 1

TAG_PREFIX = PLUGIN_NAME + "/"
TAG_LAYERS = TAG_PREFIX + "layers"  # float32 [L, len(LAYER_STATS)] per logged step
TAG_GLOBAL = TAG_PREFIX + "global"  # float32 [len(global names)] per logged step
TAG_HISTOGRAMS = TAG_PREFIX + "histograms"  # float32 [L, 2, HIST_ROW] now and then
TAG_ALERTS = TAG_PREFIX + "alerts"  # string [k], one JSON alert each, when raised
# float32 [len(HISTORY_REDUCTIONS), L, len(LAYER_STATS)] per block of steps
# whose layer rows were not kept at full resolution (long runs; see below).
TAG_LAYER_HISTORY = TAG_PREFIX + "layer_history"
TAG_EPOCHS = TAG_PREFIX + "epochs"  # string [1], one JSON object per finished epoch
TAGS = (TAG_LAYERS, TAG_GLOBAL, TAG_HISTOGRAMS, TAG_ALERTS, TAG_LAYER_HISTORY, TAG_EPOCHS)

# Columns of the per-layer matrix, by what they measure. NaN means "not
# measured for this layer" (a layer without weights has no gradient; a layer
# whose output could not be captured has no activation statistics). Each
# column's meaning and numpy reference is in `training_health.statistics`;
# code finds a column by these groups, never by its name's prefix.
GRADIENT_STATS = (
    "grad_norm",  # L2 norm of the layer's gradients (all its trainable variables)
    "grad_max_abs",  # max |g|
    "grad_zero_frac",  # fraction of gradient entries exactly 0
    "grad_nonfinite",  # count of NaN/Inf gradient entries
)
WEIGHT_STATS = (
    "weight_norm",  # L2 norm of the trainable weights at the start of the step (W_before)
    "update_ratio",  # ||W_after - W_before|| / ||W_before||
)
ACTIVATION_STATS = (
    "act_mean",  # mean of the layer's output
    "act_std",  # std of the layer's output (all elements)
    "act_example_std",  # mean over output units of the std across the batch
    "act_zero_frac",  # fraction of output elements exactly 0
    "act_saturated_frac",  # fraction within SATURATION_EPS*(hi-lo) of a bound
    "act_nonfinite",  # count of NaN/Inf output elements
)
DEAD_UNIT_STATS = (
    "dead_frac",  # fraction of units (last axis) <= 0 for every example of the batch
    "dead_frac_window",  # fraction of units <= 0 on every batch of the window
)
# Column order of the per-layer matrix: the groups one after another.
LAYER_GROUPS = (GRADIENT_STATS, WEIGHT_STATS, ACTIVATION_STATS, DEAD_UNIT_STATS)
LAYER_STATS = sum(LAYER_GROUPS, ())

# The input batch's statistics, part of the global vector.
INPUT_STATS = ("input_mean", "input_std", "input_min", "input_max", "input_nonfinite")

# Fixed part of the global vector; compiled metrics follow, named in the
# metadata ("stats" holds the full list).
GLOBAL_STATS = (
    "loss",  # this batch's loss (not the epoch's running mean)
    "grad_norm",  # L2 norm over all gradients
    "grad_nonfinite",  # count of NaN/Inf gradient entries
) + INPUT_STATS + (
    "learning_rate",  # NaN when it cannot be read
)

# Long runs: after the first steps, the layer rows of a block of steps are
# written as one value of TAG_LAYER_HISTORY, each column reduced over the
# block's logged steps in these ways (NaN ignored; NaN where every step had
# NaN). Block `b` covers the steps b*block .. (b+1)*block - 1 (`block` is in
# the metadata); the value's step is the block's last logged step.
HISTORY_REDUCTIONS = ("min", "mean", "max")

SATURATION_EPS = 0.01  # fraction of the activation's range counted as "at the bound"

# Histograms: per layer two rows of HIST_ROW floats.
#   row 0 (gradients):   [zero_frac, nonfinite_frac, fractions in GRAD_HIST_BINS bins of log10|g|]
#   row 1 (activations): [min, max, fractions in HIST_BINS equal bins between min and max]
HIST_BINS = 32
GRAD_LOG10_RANGE = (-12.0, 4.0)  # |g| below/above land in the first/last bin
HIST_ROW = HIST_BINS + 2
HIST_SERIES = ("gradient", "activation")


class FormatError(ValueError):
    """Data that does not follow this format (or a version we do not know)."""


class UnknownVersionError(FormatError):
    """Metadata of a format version newer than this code (upgrade to read it)."""


def _metadata(kind, data_class, **content):
    body = dict(format_version=FORMAT_VERSION, kind=kind, **content)
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME,
            content=json.dumps(body, sort_keys=True).encode("utf-8"),
        ),
        data_class=data_class,
    )


def layers_metadata(layers, frozen_unmonitored=()):
    """Metadata for TAG_LAYERS. `layers` is a sequence of LayerInfo;
    `frozen_unmonitored` names the model's frozen layers that are not among
    them (not measured by default: see docs/format.md)."""
    extra = {"frozen_unmonitored": list(frozen_unmonitored)} if frozen_unmonitored else {}
    return _metadata(
        "layers",
        summary_pb2.DATA_CLASS_TENSOR,
        stats=list(LAYER_STATS),
        layers=[layer.to_json() for layer in layers],
        **extra,
    )


def layer_history_metadata(layers, block):
    """Metadata for TAG_LAYER_HISTORY: blocks of `block` steps."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise FormatError("history block must be an integer >= 1; received %r" % (block,))
    return _metadata(
        "layer_history",
        summary_pb2.DATA_CLASS_TENSOR,
        stats=list(LAYER_STATS),
        layers=[layer.to_json() for layer in layers],
        reductions=list(HISTORY_REDUCTIONS),
        block=block,
    )


def history_block_first_step(step, block):
    """The first step of the history block that holds `step`."""
    return (int(step) // int(block)) * int(block)


def global_metadata(names):
    """Metadata for TAG_GLOBAL; `names` are GLOBAL_STATS plus metric names."""
    names = list(names)
    if tuple(names[: len(GLOBAL_STATS)]) != GLOBAL_STATS:
        raise FormatError(
            "global stat names must start with GLOBAL_STATS; received %r" % (names,)
        )
    return _metadata("global", summary_pb2.DATA_CLASS_TENSOR, stats=names)


def histograms_metadata(layers):
    return _metadata(
        "histograms",
        summary_pb2.DATA_CLASS_TENSOR,
        layers=[layer.name for layer in layers],
        series=list(HIST_SERIES),
        bins=HIST_BINS,
        grad_log10_range=list(GRAD_LOG10_RANGE),
    )


def alerts_metadata():
    return _metadata("alerts", summary_pb2.DATA_CLASS_TENSOR)


def epochs_metadata():
    return _metadata("epochs", summary_pb2.DATA_CLASS_TENSOR)


def parse_metadata(content):
    """Parses the plugin content bytes of one of our tags into a dict.

    Raises FormatError for content that is not ours or whose format version
    is newer than this code understands.
    """
    if isinstance(content, str):
        content = content.encode("utf-8")
    try:
        body = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError("plugin content is not JSON: %s" % e) from e
    if not isinstance(body, dict) or "format_version" not in body:
        raise FormatError("plugin content has no format_version: %r" % (content[:80],))
    version = body["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise UnknownVersionError(
            "unknown Training Health format version %r (this code reads up to %d); "
            "upgrade training-health to read these logs" % (version, FORMAT_VERSION)
        )
    if "layers" in body and body.get("kind") in ("layers", "layer_history"):
        try:
            body["layers"] = [LayerInfo.from_json(x) for x in body["layers"]]
        except (AttributeError, TypeError, ValueError) as e:
            raise FormatError("malformed layer list in plugin content: %s" % e) from e
    return body


def encode_alert(alert_dict):
    """One alert (a dict of JSON-able values) to the bytes stored in TAG_ALERTS."""
    return json.dumps(alert_dict, sort_keys=True).encode("utf-8")


def decode_alerts(array):
    """A TAG_ALERTS value (numpy array of bytes) to a list of dicts."""
    out = []
    for item in np.asarray(array, dtype=object).reshape(-1):
        if isinstance(item, bytes):
            item = item.decode("utf-8", "replace")
        try:
            value = json.loads(item)
        except ValueError as e:
            raise FormatError("alert is not JSON: %r" % (item[:80],)) from e
        out.append(value)
    return out


# An epoch's metrics are JSON (not a float vector named in the metadata):
# TensorBoard keeps only the first metadata of a tag, and the names can grow
# during a run (validation every few epochs, metrics reported by the user).
def _json_number(value):
    value = float(value)
    if value != value:
        return None
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _from_json_number(value):
    if value is None:
        return float("nan")
    if value in ("Infinity", "-Infinity", "NaN"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FormatError("an epoch metric must be a number, null or \"Infinity\"; received %r"
                          % (value,))
    return float(value)


def encode_epoch(epoch, metrics):
    """One finished epoch (its index and {name: number}) to the bytes stored
    in TAG_EPOCHS. NaN is written as null, +/-Inf as "Infinity"/"-Infinity"."""
    body = {"epoch": int(epoch),
            "metrics": {str(name): _json_number(v) for name, v in metrics.items()}}
    return json.dumps(body, allow_nan=False).encode("utf-8")  # metrics in the order reported


def decode_epoch(array):
    """A TAG_EPOCHS value (numpy array of bytes) to (epoch, {name: float}).

    Raises FormatError for a value that is not one such JSON object.
    """
    items = np.asarray(array, dtype=object).reshape(-1)
    if len(items) != 1:
        raise FormatError("an epoch value holds one JSON object; received %d" % len(items))
    item = items[0]
    if isinstance(item, bytes):
        item = item.decode("utf-8", "replace")
    try:
        body = json.loads(item)
        epoch, metrics = body["epoch"], body["metrics"]
    except (ValueError, TypeError, KeyError) as e:
        raise FormatError("epoch value is not {\"epoch\": ..., \"metrics\": {...}}: %r"
                          % (str(item)[:80],)) from e
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not isinstance(metrics, dict):
        raise FormatError("epoch value has epoch %r and metrics %r" % (epoch, type(metrics)))
    return epoch, {str(k): _from_json_number(v) for k, v in metrics.items()}


def tensor_value(array):
    """A TensorProto for a value: float arrays become float32, text stays text."""
    array = np.asarray(array)
    if array.dtype.kind not in "fiub":
        return tensor_util.make_tensor_proto(array)
    if array.ndim == 0:
        return tensor_util.make_tensor_proto(array.astype(np.float32))
    # What make_tensor_proto writes for a float32 array (raw little-endian
    # bytes in tensor_content), built directly: the logger writes two of
    # these per step and the general function costs ~10x more.
    array = array.astype("<f4", order="C", copy=False)
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape])
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_shape=shape, tensor_content=array.tobytes())


def make_event(tag, step, value, metadata=None, wall_time=0.0):
    """An Event holding one summary value under `tag` (metadata on first write)."""
    summary_value = summary_pb2.Summary.Value(tag=tag, tensor=tensor_value(value))
    if metadata is not None:
        summary_value.metadata.CopyFrom(metadata)
    return event_pb2.Event(
        wall_time=wall_time,
        step=int(step),
        summary=summary_pb2.Summary(value=[summary_value]),
    )
