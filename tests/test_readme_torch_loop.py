"""The README's PyTorch loop, run as it is written: it records every step
of every epoch (also after an evaluation that put the model in eval()
mode) and stops the whole training, not only the epoch, on a stop_on
alert."""

import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import REPO_ROOT  # noqa: E402
from training_health import format as fmt  # noqa: E402
from training_health.io import reader  # noqa: E402

BATCHES = 20  # per epoch
NAN_FROM = 25  # the first step whose inputs are NaN (in the second epoch)


def readme_torch_loop():
    with open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    (loop,) = [b for b in blocks if "training_health.torch.HealthMonitor" in b]
    return loop


def test_the_readme_loop_records_every_epoch_and_stops_the_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    batches = []
    for i in range(BATCHES):
        x = torch.randn(16, 6, generator=g)
        batches.append((x, (x[:, 0] > 0).long()))
    epochs_run = []

    class Loader:  # the same batches every epoch; NaN inputs from step NAN_FROM on
        def __iter__(self):
            epoch = len(epochs_run)
            for i, (x, y) in enumerate(batches):
                step = epoch * BATCHES + i + 1
                yield (torch.full_like(x, float("nan")) if step >= NAN_FROM else x), y

    def evaluate(model):
        epochs_run.append(True)
        model.eval()
        with torch.no_grad():
            x, y = batches[0]
            return float(torch.nn.functional.cross_entropy(model(x), y))

    torch.manual_seed(0)
    namespace = {"MyModel": lambda: torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(),
                                                        torch.nn.Linear(16, 2)),
                 "device": "cpu", "epochs": 10, "loader": Loader(), "evaluate": evaluate}
    exec(readme_torch_loop(), namespace)

    monitor = namespace["monitor"]
    assert monitor.stop_requested
    assert any(a.kind == "nan_inf" for a in monitor.alerts)
    (run,) = reader.read_logdir(str(tmp_path / "runs"))
    steps = [s.step for s in run.steps]
    last = steps[-1]
    assert steps == list(range(1, last + 1)) and NAN_FROM <= last < 10 * BATCHES - 1, steps
    # The training ended in the epoch of the stop: no step, no evaluation after it.
    assert len(epochs_run) == (last - 1) // BATCHES + 1, (len(epochs_run), last)
    # Every epoch's forwards recorded, also after evaluate() set eval()
    # mode (the loop sets train() again).
    act = fmt.LAYER_STATS.index("act_std")
    for step in (BATCHES // 2, BATCHES + 2):
        assert np.isfinite(run.steps[step - 1].layer_values[:, act]).all(), step
