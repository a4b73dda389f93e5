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


class Validated(Classifier):
    """Logs a validation loss and accuracy each epoch; `training_step` calls
    its network, not its own forward."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_accuracy", (logits.argmax(1) == y).float().mean())


def test_epochs_end_with_the_logged_validation_metrics_and_inputs_come_from_the_batch(tmp_path):
    torch.manual_seed(0)
    callback = HealthCallback(str(tmp_path), flush_every=3)
    trainer(callback).fit(Validated(), loader(), loader(n=16))
    (run,) = reader.read_logdir(str(tmp_path))
    assert [(e.epoch, e.step) for e in run.epochs] == [(1, 8), (2, 16)]
    for e in run.epochs:
        assert {"val_loss", "val_accuracy", "loss"} <= set(e.metrics), e.metrics
        assert all(np.isfinite(e.metrics[k]) for k in ("val_loss", "val_accuracy", "loss"))
    # The input columns of each step: its batch's first 8 examples (the
    # module's own forward never ran).
    x = next(iter(loader()))[0].double().numpy()
    first = run.steps[0].global_values
    np.testing.assert_allclose([first["input_mean"], first["input_min"], first["input_max"]],
                               [x.mean(), x.min(), x.max()], rtol=1e-5)


def test_options_are_checked_at_construction(tmp_path):
    with pytest.raises(ValueError, match="flush_every"):
        HealthCallback(str(tmp_path), flush_every=0)
    with pytest.raises(ValueError, match="stop_on"):
        HealthCallback(str(tmp_path), stop_on=["no_such_alert"])


class Failing(Classifier):
    def training_step(self, batch, batch_idx):
        if batch_idx == 3:
            raise RuntimeError("a bug in training_step")
        return super().training_step(batch, batch_idx)


def test_a_failing_fit_writes_its_steps_and_removes_the_hooks(tmp_path):
    torch.manual_seed(0)
    callback = HealthCallback(str(tmp_path))
    model = Failing()
    with pytest.raises(RuntimeError, match="a bug in training_step"):
        trainer(callback).fit(model, loader())
    assert not model.net[0]._forward_hooks and not model._forward_pre_hooks
    (run,) = reader.read_logdir(str(tmp_path))
    assert [s.step for s in run.steps] == [1, 2, 3]
