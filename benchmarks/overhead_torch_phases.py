"""Where the PyTorch HealthMonitor's time goes in a training step.

Trains one `overhead_torch` model, plain and with the monitor in turn
(blocks of `--steps` steps, the order alternating round by round, in one
process), and times each phase of every step on its own: the forward pass
(with the monitor's forward hooks), the backward pass, `optimizer.step()`
(with its step hooks), `monitor.step()`, and the `flush()` that ends each
monitored block. Prints each phase's median per step for both and the
difference, and the median over blocks of each phase's health/plain ratio.

What it tells: whether the monitor's cost stays in its own phases (forward,
optimizer, step) or also slows the training's own work (a backward pass
slower with the monitor than without), which one end-to-end ratio cannot
tell apart from the machine's noise.

Usage: python benchmarks/overhead_torch_phases.py [--model resnet18] [--rounds 24]
       [--steps 4] [--batch 32] [--device cpu|cuda]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead_torch  # noqa: E402

PHASES = ("forward", "backward", "optimizer", "monitor_step", "flush")
# The phases in which the plain loop does nothing (the monitor's alone).
MONITOR_ONLY = ("monitor_step", "flush")


def timed_step(inst, x, y, device):
    """One training step of `inst` in its current variant: each phase's seconds."""
    t = [time.perf_counter()]
    inst.optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(inst.model(x), y)
    overhead_torch.sync(device)
    t.append(time.perf_counter())
    loss.backward()
    overhead_torch.sync(device)
    t.append(time.perf_counter())
    inst.optimizer.step()
    overhead_torch.sync(device)
    t.append(time.perf_counter())
    if inst.variant == "health":
        inst.monitor.step(loss)
    overhead_torch.sync(device)
    t.append(time.perf_counter())
    return [b - a for a, b in zip(t, t[1:])]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18", choices=("resnet18", "transformer"))
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tmp = tempfile.mkdtemp(prefix="th-bench-phases-")
    try:
        inst = overhead_torch.Instance(args.model, device, seed=0, logdir=tmp)
        batches = overhead_torch.make_batches(args.model, device, args.batch)
        # per variant, per phase: one list of per-step seconds per block
        blocks = {v: {p: [] for p in PHASES} for v in ("plain", "health")}
        for variant in ("plain", "health", "plain"):  # warm-up
            inst.use(variant)
            for x, y in batches[:3]:
                timed_step(inst, x, y, device)
            inst.flush()
        for r in range(args.rounds):
            for variant in (("plain", "health") if r % 2 == 0 else ("health", "plain")):
                inst.use(variant)
                steps = [timed_step(inst, *batches[s % len(batches)], device)
                         for s in range(args.steps)]
                t0 = time.perf_counter()
                inst.flush()
                overhead_torch.sync(device)
                flush = (time.perf_counter() - t0) / args.steps
                for i, phase in enumerate(PHASES[:-1]):
                    blocks[variant][phase].append(sum(s[i] for s in steps) / args.steps)
                blocks[variant]["flush"].append(flush)
        inst.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%s on %s, batch %d, %d rounds x %d steps per variant" % (
        args.model, device, args.batch, args.rounds, args.steps))
    # Each phase's time added by the monitor, per step: (the median of the
    # blocks' health/plain ratios - 1) x the plain median (a paired figure:
    # each block against the plain block next to it), or the monitor's own
    # median where the plain loop does nothing.
    added = {}
    for phase in PHASES:
        plain = statistics.median(blocks["plain"][phase]) * 1e3
        health = statistics.median(blocks["health"][phase]) * 1e3
        if phase in MONITOR_ONLY:
            added[phase], ratio = health, ""
        else:
            r = statistics.median(h / p for h, p in zip(blocks["health"][phase],
                                                        blocks["plain"][phase]))
            added[phase], ratio = (r - 1.0) * plain, "  block ratio x%.3f" % r
        print("  %-12s plain %8.2f ms/step  health %8.2f ms/step  added %+8.2f ms/step%s" % (
            phase, plain, health, added[phase], ratio))
    step = sum(statistics.median(blocks["plain"][p]) for p in PHASES) * 1e3
    own = sum(added[p] for p in PHASES if p != "backward")
    print("  added by the monitor's phases (forward, optimizer, monitor_step, flush): "
          "%+.1f ms/step, %.1f%% of the plain step; backward %+.1f ms/step" % (
              own, 100 * own / step, added["backward"]))


if __name__ == "__main__":
    main()
