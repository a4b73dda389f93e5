"""Training health for PyTorch Lightning: one callback on the PyTorch monitor.

    trainer = lightning.Trainer(callbacks=[training_health.lightning.HealthCallback("runs/my_run")])

The callback creates a `training_health.torch.HealthMonitor` on the
LightningModule and its (first) optimizer when training starts, records
every optimizer step (once per accumulated step with
`accumulate_grad_batches`), ends every training epoch with the metrics the
module logged (`val_loss` and the others: the `overfitting` alert and the
tab's epochs), stops training on a `stop_on` alert, and closes the monitor
when training ends or fails. Under DDP every process records (the
statistics are of the whole step) and rank 0 writes.
"""

import inspect

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
from training_health.capture.torch_program import _first_tensor
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

    A step's input statistics are those of the module's own forward
    (`self(x)` in `training_step`); where `training_step` calls submodules
    instead, of the batch's first tensor (the `x` of an `(x, y)` batch,
    when it is a floating-point tensor).

    Raises:
        ValueError: an option is unknown or out of range (at construction).
    """

    def __init__(self, logdir, **options):
        super().__init__()
        unknown = set(options) - _OPTIONS
        if unknown:
            raise ValueError("unknown option(s) %s; HealthCallback takes %s"
                             % (sorted(unknown), sorted(_OPTIONS)))
        _check(logdir, options)
        self.logdir = str(logdir)
        self.options = options
        self.monitor = None
        self._steps_seen = 0
        self._epoch_steps = 0  # the steps recorded since the last end of an epoch

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

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.monitor is not None:
            self.monitor._program.batch_inputs(_first_tensor(batch))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        monitor = self.monitor
        if monitor is None or monitor.optimizer_steps == self._steps_seen:
            return  # no optimizer step in this batch (gradient accumulation)
        self._steps_seen = monitor.optimizer_steps
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        monitor.step(loss)
        self._epoch_steps += 1
        if monitor.stop_requested:
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module):
        # (after the epoch's validation pass: its metrics are in callback_metrics)
        if self.monitor is None or not self._epoch_steps:
            return
        self._epoch_steps = 0
        metrics = host.epoch_metrics(dict(trainer.callback_metrics), skip_others=True)
        # (the epoch's loss: the mean of its steps' losses, as the monitor
        # keeps it; a logged "loss" may be the last step's)
        metrics.pop("loss", None)
        self.monitor.end_epoch(val_loss=metrics.pop("val_loss", None), **metrics)

    def on_train_end(self, trainer, pl_module):
        if self.monitor is not None:
            self.monitor.close()

    def on_exception(self, trainer, pl_module, exception):
        # (what was recorded is written, the hooks removed from the module)
        if self.monitor is not None:
            self.monitor.close()


def _check(logdir, options):
    """The checks `HealthMonitor` makes of its options, made now (the
    monitor is created when training starts)."""
    defaults = {name: p.default for name, p in
                inspect.signature(HealthMonitor.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    o = dict(defaults, **options)
    host.check_logdir(logdir, o["storage_options"])
    host.check_history(o["history_after"], o["history_block"])
    host.check_options(o["every_n_batches"], o["histogram_every"], o["dead_window"],
                       o["flush_every"], o["layers"], o["stop_on"], o["activation_examples"],
                       o["on_alert"])
    if o["initial_step"] is not None:
        host.check_int("initial_step", o["initial_step"], 0)


_OPTIONS = {"every_n_batches", "histogram_every", "layers", "dead_window", "flush_every",
            "activation_examples", "detectors", "stop_on", "on_alert", "storage_options",
            "history_after", "history_block", "initial_step"}
