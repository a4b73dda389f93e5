"""Training health for a PyTorch training loop: one call per step.

    monitor = training_health.torch.HealthMonitor("runs/my_run", model, optimizer)
    for x, y in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        monitor.step(loss)          # the one call
    monitor.close()

Hooks on the model and the optimizer compute every statistic on the
model's device inside the step; rows wait in a small buffer there and a
background thread copies them to the host every `flush_every` steps, runs
the detectors and writes TensorBoard event files. Nothing in the step waits
for the device.
"""

import contextlib

try:
    import torch
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "training_health.torch needs PyTorch. Install it with "
        "`pip install training-health[torch]` (or `pip install torch`). (%s)" % e
    ) from e

from training_health.capture import host
from training_health.capture.torch_program import TorchProgram

__all__ = ["HealthMonitor", "optimizer_step_count"]


class _DataParallel:
    """The statistics of the whole step under DistributedDataParallel: each
    process's examples gathered, unit activity and loss reduced (the
    gradients DDP already averaged)."""

    def __init__(self, dist, world_size):
        self.dist = dist
        self.world_size = world_size

    def examples(self, t):
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        self.dist.all_gather(parts, t)
        return torch.cat(parts, dim=0)

    def any(self, flags):
        x = flags.to(torch.int32)
        self.dist.all_reduce(x, op=self.dist.ReduceOp.MAX)
        return x.bool()

    def mean(self, value):
        x = value.clone()
        self.dist.all_reduce(x)
        return x / self.world_size

    def agree(self, flag, device):
        """Whether `flag` (a bool) is True in any process: every process
        calls it at the same step and gets the same answer (waits for the
        device and the other processes)."""
        return bool(self.any(torch.tensor([bool(flag)], device=device)).item())


def optimizer_step_count(optimizer):
    """The optimizer steps an optimizer has taken, as far as its state
    tells: the largest per-parameter "step" (Adam, AdamW, RMSprop, Adagrad,
    ... keep one; it survives `state_dict()` / `load_state_dict()`), or 0
    where it keeps none (SGD)."""
    steps = [state["step"] for state in optimizer.state.values()
             if isinstance(state, dict) and "step" in state]
    # (read once, when the monitor is created)
    return max((int(s.item() if isinstance(s, torch.Tensor) else s) for s in steps), default=0)


class HealthMonitor:
    """Per-step training health for a PyTorch loop.

    Call `step(loss)` once per optimizer step, right after
    `optimizer.step()` (or `scaler.step(optimizer)`); hooks on the model and
    the optimizer do the rest. `close()` at the end (or use the monitor as a
    context manager) writes what is left and removes the hooks.

    Monitored are the modules with parameters of their own (`Linear`,
    `Conv2d`, `BatchNorm2d`, `LSTM`, `Embedding`, `MultiheadAttention`...)
    and the activation modules (`ReLU`, `GELU`, `Sigmoid`...), named by
    their `named_modules()` path. A module whose parameters all have
    `requires_grad=False` is left out by default (named in the run's
    metadata as frozen and not monitored); named in `layers`, it is
    monitored as frozen (`LayerInfo.frozen`): its activations and dead
    units are measured, also when it runs in eval() mode or under
    `torch.no_grad()` inside the training forward, and it has no gradient
    or update statistics. A unit is an output feature (last axis),
    or a channel for convolution, normalization and pooling outputs (and the
    activation modules behind them).

    Args:
        logdir: directory (or bucket URL) of this run's event files.
        model: the `torch.nn.Module` being trained (also inside
            DistributedDataParallel or `torch.compile`).
        optimizer: the `torch.optim.Optimizer` that updates it.
        every_n_batches: log statistics every this many optimizer steps.
            Defaults to 1.
        histogram_every: log gradient and activation histograms every this
            many steps; 0 turns them off. Defaults to 100.
        layers: list of module paths or regular expressions (full match) to
            monitor, or None for the default set above. Defaults to None.
        dead_window: steps over which a unit must stay at <= 0 to count as
            dead in `dead_frac_window`. Defaults to 50.
        flush_every: copy the device buffer to the host every this many
            steps (one copy, on a background thread). Defaults to 50.
        activation_examples: activation and input statistics use the first
            this many examples of each batch (under DDP, of each process's
            share of it); None uses the whole batch. Dead units of the
            ReLU family cover the whole batch, those of other activations
            these examples. Defaults to 8.
        detectors: a `training_health.detectors.DetectorSuite`, or None to
            turn online alerts off. Defaults to the default suite.
        stop_on: alert kinds that set `stop_requested`, e.g. `["nan_inf"]`.
            Defaults to `()`.
        on_alert: callable taking each raised `Alert`, called on the
            training thread in `step()`. Exceptions it raises are logged,
            not propagated. Defaults to None.
        storage_options: fsspec options for a bucket logdir (credentials,
            endpoint), or None. Defaults to None.
        history_after, history_block: how a long run's layer statistics
            are downsampled on disk, as in `training_health.keras.HealthCallback`
            (the detectors see every step). Default to 10000 and 100.
        initial_step: the number of optimizer steps already taken, for a
            resumed run: the first `step()` is recorded as step
            `initial_step + 1`, after the steps the run already wrote (as
            the Keras capture numbers steps from the optimizer's
            `iterations`). None takes the step count the optimizer keeps
            (Adam, AdamW, RMSprop, Adagrad... after `load_state_dict`), or
            0 for one that keeps none (SGD: pass it). Defaults to None.

    Under DistributedDataParallel every process creates the monitor and
    calls `step()`; the statistics are those of the whole step (the
    examples of every process), and only rank 0 writes and raises alerts.
    With `stop_on`, the processes agree on `stop_requested` every
    `flush_every` steps (one all-reduce of a flag), so that all of them
    leave the loop at the same step (rank 0 alone would leave the others
    waiting for it in the next collective).

    Raises:
        ValueError: an argument is out of range or of the wrong type.
    """

    def __init__(self, logdir, model, optimizer, every_n_batches=1, histogram_every=100,
                 layers=None, dead_window=50, flush_every=50, activation_examples=8,
                 detectors="default", stop_on=(), on_alert=None, storage_options=None,
                 history_after=host.HISTORY_AFTER, history_block=host.HISTORY_BLOCK,
                 initial_step=None):
        host.check_logdir(logdir, storage_options)
        host.check_history(history_after, history_block)
        host.check_options(every_n_batches, histogram_every, dead_window, flush_every, layers,
                           stop_on, activation_examples, on_alert)
        if not isinstance(model, torch.nn.Module):
            raise ValueError("`model` must be a torch.nn.Module; received %r" % (type(model),))
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError("`optimizer` must be a torch.optim.Optimizer; received %r"
                             % (type(optimizer),))
        if initial_step is None:
            initial_step = optimizer_step_count(optimizer)
        else:
            host.check_int("initial_step", initial_step, 0)
        self.logdir = str(logdir)
        self.model = model
        self.optimizer = optimizer
        self.flush_every = flush_every
        self.stop_requested = False  # set when an alert of a `stop_on` kind is raised
        self._stop_wanted = False  # rank 0's own `stop_on` alert, before the processes agree
        self.detectors = host.default_detectors() if detectors == "default" else detectors
        gather, self.rank = None, 0
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self.rank = dist.get_rank()
            gather = _DataParallel(dist, dist.get_world_size())
        # (the processes must leave the loop together: see the class docstring)
        self._agree = gather if gather is not None and stop_on else None
        rows = max(4 * flush_every, 64)
        self._program = TorchProgram(model, optimizer, layers, every_n_batches, histogram_every,
                                     dead_window, activation_examples, rows, gather=gather,
                                     start_step=initial_step)
        self._host = None
        if self.rank == 0:
            if self.detectors is not None:
                self.detectors.reset()
            self._host = host.Host(self.logdir, self._program, self.detectors, stop_on, on_alert,
                                   self._request_stop, storage_options=storage_options,
                                   history_after=history_after, history_block=history_block)
        self._alerts = []
        self._steps = 0
        self._epochs = 0
        self._closed = False
        host.close_at_exit(self)

    @property
    def alerts(self):
        """Every alert raised so far (`Alert` records), oldest first (rank 0)."""
        return self._host.alerts if self._host is not None else self._alerts

    @property
    def optimizer_steps(self):
        """How many times `optimizer.step()` has run since the monitor was
        created (a step that a GradScaler skipped does not count)."""
        return self._program.optimizer_steps

    def step(self, loss=None):
        """Records the optimizer step that just ran. Call it right after
        `optimizer.step()`, once per optimizer step (with gradient
        accumulation, once per accumulated step).

        Args:
            loss: the step's loss (a tensor, or a number), or None.
        """
        if self._closed:
            raise RuntimeError("HealthMonitor.step() called after close()")
        group = self.optimizer.param_groups[0]
        self._program.end_step(loss, group.get("lr"))
        self._steps += 1
        if self._host is not None:
            if self._steps % self.flush_every == 0:
                self._host.collect_in_background()
            self._host.dispatch()
        if self._agree is not None and self._steps % self.flush_every == 0:
            self.stop_requested = self._agree.agree(self._stop_wanted, self._program.device)

    def end_epoch(self, val_loss=None, loss=None, **metrics):
        """Records the end of an epoch: its validation loss and metrics, for
        the `overfitting` alert and the tab. Call it once per epoch, after
        the epoch's last `step()` and its validation pass.

        Args:
            val_loss: the epoch's validation loss (a number or a scalar
                tensor), or None when the epoch was not validated.
            loss: the epoch's training loss. Defaults to the mean of the
                losses given to `step()` at the logged steps of the epoch.
            **metrics: any other metrics of the epoch, e.g.
                `val_accuracy=0.91, accuracy=0.95` (`val_` for validation).

        Raises:
            ValueError: a value is not one number, or no `step()` since the
                previous `end_epoch()`.
        """
        if self._closed:
            raise RuntimeError("HealthMonitor.end_epoch() called after close()")
        host.end_epoch(self._host, self._epochs + 1, loss, val_loss, metrics)
        self._epochs += 1

    def flush(self):
        """Copies every recorded step to the host and waits until it is written.

        Returns:
            True when every step recorded so far is in the event files
            (handed to the operating system: it survives a kill of the
            process) or this process does not write (not rank 0); False
            when writing failed or timed out, the steps stay queued and are
            retried. In a run past `history_after` steps, the layer rows of
            the current history block wait for the block's end.
        """
        return True if self._host is None else self._host.flush()

    def close(self):
        """Writes what the device still holds, closes the files and removes
        the hooks (also when writing fails)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._host is not None:
                self._host.close()
        finally:
            self._program.remove()

    @contextlib.contextmanager
    def paused(self):
        """A context in which the model's forwards are not recorded.

        A step's activation and input statistics come from the first
        training forward after the previous `step()`. Where the model also
        runs, with gradients, for another optimizer (a GAN's discriminator
        judging fakes in the generator's step), run that forward paused so
        that it is not taken for the first forward of the model's own next
        step:

            with d_monitor.paused():
                g_loss = criterion(discriminator(fake), real_labels)
        """
        previous = self._program.paused
        self._program.paused = True
        try:
            yield self
        finally:
            self._program.paused = previous

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _request_stop(self):
        self._stop_wanted = True
        if self._agree is None:  # (else at the next agreement, in every process)
            self.stop_requested = True
