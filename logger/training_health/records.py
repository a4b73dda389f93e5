"""Plain records shared by the logger, the detectors, the CLI and the plugin."""

import dataclasses
from typing import Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """What the logger knows about one monitored layer.

    Attributes:
        name: the layer's name (unique within the run).
        type: the layer's class name, e.g. "Conv2D".
        activation: normalized activation name of the layer's output:
            "relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "softmax",
            "hard_sigmoid", "hard_tanh", "relu6", "linear", ... or "" if unknown.
        bounds: (lo, hi) of a bounded activation, or None.
        units: size of the output's last axis (0 if unknown).
        has_weights: whether the layer has trainable weights (gradient stats).
        has_activation: whether the layer's output was captured.
        is_output: whether the layer produces one of the model's outputs
            (False when unknown, e.g. for subclassed models).
        frozen: whether the layer holds weights of which none is trained
            (Keras: `trainable=False`, set on the layer or on a model that
            contains it; PyTorch: no parameter requires grad). It gets no
            gradient by design: its gradient and weight statistics are not
            measured (`has_weights` is False) and no alert speaks of that.
            False in runs written before the field existed.
    """

    name: str
    type: str = ""
    activation: str = ""
    bounds: Optional[Tuple[float, float]] = None
    units: int = 0
    has_weights: bool = False
    has_activation: bool = False
    is_output: bool = False
    frozen: bool = False

    RELU_FAMILY = ("relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu")

    @property
    def is_relu_family(self):
        return self.activation in self.RELU_FAMILY

    def to_json(self):
        d = dataclasses.asdict(self)
        d["bounds"] = list(self.bounds) if self.bounds is not None else None
        return d

    @classmethod
    def from_json(cls, d):
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in fields}
        if d.get("bounds") is not None:
            d["bounds"] = tuple(float(x) for x in d["bounds"])
        return cls(**d)


@dataclasses.dataclass
class StepStats:
    """The statistics of one logged step, as detectors see them.

    Attributes:
        step: global step (only increases within a run).
        layers: tuple of LayerInfo, one per row of `layer_values`.
        layer_stats: tuple of column names of `layer_values` (format.LAYER_STATS).
        layer_values: float32 array [len(layers), len(layer_stats)]; NaN = not measured.
        global_values: dict name -> float (format.GLOBAL_STATS plus metrics).
    """

    step: int
    layers: tuple
    layer_stats: tuple
    layer_values: np.ndarray
    global_values: dict

    def column(self, stat):
        """The values of one statistic for every layer, as a float array [L]."""
        return self.layer_values[:, self.layer_stats.index(stat)]

    def value(self, layer_index, stat):
        return float(self.layer_values[layer_index, self.layer_stats.index(stat)])


@dataclasses.dataclass
class EpochStats:
    """The metrics of one finished epoch, as epoch-level detectors see them.

    Attributes:
        step: the global step of the epoch's last training step.
        epoch: the epoch's number, counted from 1 as Keras prints it
            ("Epoch 3/10"; Keras's 0-based `epoch` index + 1).
        metrics: dict name -> float: `loss` (the epoch's training loss: the
            mean over its batches), the training metrics, and `val_loss` and
            the other `val_*` metrics when the epoch ended with a validation
            pass. Non-finite values are kept as they were (NaN, Inf).
    """

    step: int
    epoch: int
    metrics: dict


SEVERITIES = ("warning", "critical")
KINDS = (
    "stalled",
    "dead_units",
    "vanishing_gradients",
    "exploding_gradients",
    "nan_inf",
    "saturation",
    "oscillating_loss",
    "constant_output",
    "overfitting",
)


@dataclasses.dataclass(frozen=True)
class Alert:
    """One finding. `cleared=True` records that an earlier episode ended.

    Attributes:
        kind: one of KINDS.
        step: first step at which the evidence was conclusive (or, for a
            cleared record, the step at which the condition went away).
        layer: layer name or None for a model-wide finding.
        severity: "warning" or "critical".
        message: what was measured, with the numbers.
        hint: likely causes and fixes, drawn from what was measured.
        cleared: True for the record that closes an episode.
        incident: number of the incident the alert belongs to (1, 2, ... in
            the run's order; see `detectors.incidents`), or None when not
            grouped.
        caused_by: for an alert that follows from an earlier one, that
            alert's reference ("kind@step" or "kind@step/layer"); None for
            the first alert of an incident.
    """

    kind: str
    step: int
    layer: Optional[str]
    severity: str
    message: str
    hint: str
    cleared: bool = False
    incident: Optional[int] = None
    caused_by: Optional[str] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError("Alert kind must be one of %s; received %r" % (KINDS, self.kind))
        if self.severity not in SEVERITIES:
            raise ValueError(
                "Alert severity must be one of %s; received %r" % (SEVERITIES, self.severity)
            )

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d):
        return cls(
            kind=d["kind"],
            step=int(d["step"]),
            layer=d.get("layer"),
            severity=d["severity"],
            message=d.get("message", ""),
            hint=d.get("hint", ""),
            cleared=bool(d.get("cleared", False)),
            incident=None if d.get("incident") is None else int(d["incident"]),
            caused_by=None if d.get("caused_by") is None else str(d["caused_by"]),
        )
