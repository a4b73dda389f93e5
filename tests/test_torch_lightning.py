"""The PyTorch Lightning callback: a real Trainer (CPU) with the callback
writes one row per optimizer step (also with gradient accumulation), the
statistics of the PyTorch monitor, and stops training on a stop_on alert."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from training_health import format as fmt  # noqa: E402
from training_health.io import reader  # noqa: E402
from training_health.lightning import HealthCallback  # noqa: E402


class Classifier(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n=64, nan=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    if nan:
        x[:, 0] = float("nan")
    return DataLoader(TensorDataset(x, torch.randint(0, 3, (n,), generator=g)), batch_size=8)


def trainer(callback, **kwargs):
    return pl.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                      **kwargs)


@pytest.mark.parametrize("accumulate", [1, 4])
def test_one_row_per_optimizer_step(tmp_path, accumulate):
    torch.manual_seed(0)
    callback = HealthCallback(str(tmp_path), flush_every=3)
    trainer(callback, accumulate_grad_batches=accumulate).fit(Classifier(), loader())
    (run,) = reader.read_logdir(str(tmp_path))
    assert [s.step for s in run.steps] == list(range(1, 2 * 8 // accumulate + 1))
    assert [l.name for l in run.steps[0].layers] == ["net.0", "net.1", "net.2"]
    last = run.steps[-1]
    grad = fmt.LAYER_STATS.index("grad_norm")
    assert np.isfinite(last.layer_values[[0, 2], grad]).all()
    assert np.isfinite(last.global_values["loss"])
    assert not callback.monitor.model.net[0]._forward_hooks  # closed: hooks removed


def test_stop_on_stops_the_trainer(tmp_path):
    callback = HealthCallback(str(tmp_path), stop_on=["nan_inf"], flush_every=1)
    fit = trainer(callback)
    fit.fit(Classifier(), loader(nan=True))
    assert "nan_inf" in {a.kind for a in callback.alerts}
    assert fit.global_step < 16  # stopped before the two epochs' 16 steps


def test_unknown_option_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown option.*flush_secs"):
        HealthCallback(str(tmp_path), flush_secs=2)


def test_a_run_resumed_from_a_checkpoint_goes_on_numbering(tmp_path):
    """Fit one epoch, save a checkpoint, resume from it for a second: the
    second fit's steps follow the first's (the trainer's global_step)."""
    torch.manual_seed(0)
    model = Classifier()
    first = pl.Trainer(max_epochs=1, callbacks=[HealthCallback(str(tmp_path / "run"))], logger=False,
                       enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False, accelerator="cpu")
    first.fit(model, loader())
    first.save_checkpoint(str(tmp_path / "epoch1.ckpt"))
    trainer(HealthCallback(str(tmp_path / "run"))).fit(Classifier(), loader(),
                                                       ckpt_path=str(tmp_path / "epoch1.ckpt"))
    (run,) = reader.read_logdir(str(tmp_path / "run"))
    assert [s.step for s in run.steps] == list(range(1, 17))  # 8 steps an epoch, 2 epochs
