"""Reads Training Health event files back with TensorBoard's own loader (tests only)."""

import glob
import os

from tensorboard.backend.event_processing import event_file_loader
from tensorboard.util import tensor_util

from training_health import format as fmt


def read_run(logdir):
    """{tag: [(step, ndarray, metadata dict or None)]} over every event file of a run."""
    out = {}
    for path in sorted(glob.glob(os.path.join(logdir, "*tfevents*"))):
        for event in event_file_loader.EventFileLoader(path).Load():
            for value in event.summary.value:
                meta = None
                if value.metadata.plugin_data.content:
                    meta = fmt.parse_metadata(value.metadata.plugin_data.content)
                out.setdefault(value.tag, []).append(
                    (event.step, tensor_util.make_ndarray(value.tensor), meta))
    return out


def layer_table(logdir):
    """(layer names, global names, {step: (layer matrix, global dict)})."""
    run = read_run(logdir)
    layer_meta = run[fmt.TAG_LAYERS][0][2]
    global_meta = run[fmt.TAG_GLOBAL][0][2]
    names = [l.name for l in layer_meta["layers"]]
    steps = {}
    globals_by_step = {s: v for s, v, _ in run[fmt.TAG_GLOBAL]}
    for step, value, _ in run[fmt.TAG_LAYERS]:
        steps[step] = (value, dict(zip(global_meta["stats"], globals_by_step[step])))
    return names, global_meta["stats"], steps, layer_meta
