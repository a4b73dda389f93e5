"""Training health for PyTorch Lightning: one callback on the PyTorch monitor.

    trainer = lightning.Trainer(callbacks=[training_health.lightning.HealthCallback("runs/my_run")])

The callback creates a `training_health.torch.HealthMonitor` on the
LightningModule and its (first) optimizer when training starts, records
every optimizer step (once per accumulated step with
`accumulate_grad_batches`), stops training on a `stop_on` alert, and closes
the monitor when training ends. Under DDP every process records (the
statistics are of the whole step) and rank 0 writes.
"""

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError as e:  # pragma: no cover - exercised in a subprocess test
        raise ImportError(
            "training_health.lightning needs PyTorch Lightning. Install it with "
            "`pip install lightning` (and `pip install training-health[torch]`). (%s)" % e
        ) from e

from training_health.capture import host
from training_health.torch import HealthMonitor

__all__ = ["HealthCallback"]


class HealthCallback(Callback):
    """Logs per-step, per-layer training health of a LightningModule.

    Args:
        logdir: directory (or bucket URL) of this run's event files.
        **options: the options of `training_health.torch.HealthMonitor`
            (`every_n_batches`, `histogram_every`, `layers`, `dead_window`,
            `flush_every`, `activation_examples`, `detectors`, `stop_on`,
            `on_alert`, `storage_options`, `history_after`,
            `history_block`, `initial_step`), with its defaults, except
            `initial_step`: the trainer's `global_step` when training
            starts (a run resumed from a checkpoint goes on numbering).

    Raises:
        ValueError: an option is unknown or out of range (at construction).
    """

    def __init__(self, logdir, **options):
        super().__init__()
        host.check_logdir(logdir)
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ValueError("unknown option(s) %s; HealthCallback takes %s"
                             % (sorted(unknown), sorted(_OPTIONS)))
        self.logdir = str(logdir)
        self.options = options
        self.monitor = None
        self._steps_seen = 0

    @property
    def alerts(self):
        """Every alert raised so far (rank 0), oldest first."""
        return self.monitor.alerts if self.monitor is not None else []

    def on_train_start(self, trainer, pl_module):
        if self.monitor is None:
            options = dict(self.options)
            options.setdefault("initial_step", int(trainer.global_step))
            self.monitor = HealthMonitor(self.logdir, pl_module, trainer.optimizers[0], **options)
            self._steps_seen = self.monitor.optimizer_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        monitor = self.monitor
        if monitor is None or monitor.optimizer_steps == self._steps_seen:
            return  # no optimizer step in this batch (gradient accumulation)
        self._steps_seen = monitor.optimizer_steps
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        monitor.step(loss)
        if monitor.stop_requested:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module):
        if self.monitor is not None:
            self.monitor.close()


_OPTIONS = {"every_n_batches", "histogram_every", "layers", "dead_window", "flush_every",
            "activation_examples", "detectors", "stop_on", "on_alert", "storage_options",
            "history_after", "history_block", "initial_step"}
