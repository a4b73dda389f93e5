"""Many runs at a glance: the run overview and the comparison of runs.

Plain data in, plain data out (numpy only): the plugin's `overview` and
`compare` routes (http_api.md) read the stacked series and the alert
records through its reader and build their answers here.
"""

from training_health.records import SEVERITIES
from tensorboard_plugin_training_health import downsample

# Health status of a run, best first: "ok" (no open alert), then the
# severity of its worst open alert; "error" when its logs cannot be read.
STATUSES = ("ok",) + SEVERITIES + ("error",)
SPARK_POINTS = 40  # points of an overview row's loss sparkline
MAX_SPARK_POINTS = 1000


def open_alerts(alerts):
    """The raised alerts no later cleared record closed.

    Args:
        alerts: alert dicts in step order (the `alerts` route's records:
            `kind`, `layer`, `step`, `severity`, `cleared`, ...).

    Returns:
        The open alert dicts, in step order. A cleared record closes the
        open alerts of its kind and layer raised at or before its step.
    """
    open_ = []
    for alert in alerts:
        if alert["cleared"]:
            open_ = [a for a in open_ if not (a["kind"] == alert["kind"] and a["layer"] == alert["layer"]
                                              and a["step"] <= alert["step"])]
        else:
            open_.append(alert)
    return open_


def worst(alerts):
    """The most severe alert dict of `alerts`, the earliest of those; None for none."""
    rank = {severity: i for i, severity in enumerate(SEVERITIES)}
    return min(alerts, key=lambda a: (-rank.get(a["severity"], 0), a["step"]), default=None)


def overview_row(run, alerts, series, layers, points=SPARK_POINTS):
    """One run's row of the overview.

    Args:
        run: the run's name.
        alerts: its alert dicts in step order (see `open_alerts`).
        series: the `reader.Series` of its global tag, or None when it
            logged none.
        layers: number of monitored layers (0 when unknown).
        points: most points of the loss sparkline. Defaults to SPARK_POINTS.

    Returns:
        A dict: `run`, `status` (one of STATUSES), `worst` (the worst open
        alert: `kind`, `step`, `layer`, `severity`, `message`; or None),
        `open_alerts`, `alerts` (raised records), `steps` (logged steps
        held), `last_step`, `last_loss`, `layers`, `spark` (the loss as
        bucket means: `first_steps`, `last_steps`, `values`), `error`.
    """
    still_open = open_alerts(alerts)
    top = worst(still_open)
    row = {
        "run": run,
        "status": "ok" if top is None else top["severity"],
        "worst": None if top is None else {k: top[k] for k in ("kind", "step", "layer", "severity", "message")},
        "open_alerts": len(still_open),
        "alerts": sum(not a["cleared"] for a in alerts),
        "steps": 0,
        "last_step": None,
        "last_loss": None,
        "layers": int(layers),
        "spark": {"first_steps": [], "last_steps": [], "values": []},
        "error": None,
    }
    if series is not None and len(series.steps):
        loss = series.values[:, list(series.metadata["stats"]).index("loss")]
        first, last, reduced = downsample.reduce_columns(series.steps, loss, points)
        row.update(
            steps=int(len(series.steps)),
            last_step=int(series.steps[-1]),
            last_loss=downsample.to_json_values(loss[-1:])[0],
            spark={"first_steps": [int(s) for s in first], "last_steps": [int(s) for s in last],
                   "values": downsample.to_json_values(reduced)},
        )
    return row


def error_row(run, message):
    """The overview row of a run whose logs cannot be read."""
    row = overview_row(run, [], None, 0)
    row.update(status="error", error=message)
    return row


def compare_entry(run, steps, values, width):
    """One run's line of the comparison: `values` [N] over `steps`, reduced to `width` means."""
    first, last, reduced = downsample.reduce_columns(steps, values, width)
    return {
        "run": run,
        "first_steps": [int(s) for s in first],
        "last_steps": [int(s) for s in last],
        "values": downsample.to_json_values(reduced),
        "error": None,
    }
