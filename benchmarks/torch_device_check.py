"""Checks the PyTorch capture on an accelerator (CUDA): same statistics as on
the CPU, and no step waits for the device.

1. The same model (seeded), batches and optimizer run on the CPU and on the
   GPU, each through a HealthMonitor; every logged column of every step must
   agree (TF32 off; relative tolerance 1e-3, since the two devices' kernels
   sum in different orders). The CPU rows are the ones the tests check
   against the numpy reference.
2. After warm-up steps (which make the cached constants), steps run under
   `torch.cuda.set_sync_debug_mode("error")`: any call in the step that
   synchronises with the device raises.

Prints one line per check and ends with `device_check=ok` (exit status 0),
or raises. Needs only PyTorch, tensorboard and numpy (and this package).

Usage: python benchmarks/torch_device_check.py
"""

import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from torch import nn

import training_health.torch as tht
from training_health.io import reader


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, 64), nn.Sigmoid(), nn.Linear(64, 10))


def batches(n=6):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 3, 24, 24, generator=g), torch.randint(0, 10, (32,), generator=g))
            for _ in range(n)]


def train(device, logdir, steps_under_error_mode=0):
    model = make_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = tht.HealthMonitor(logdir, model, optimizer, flush_every=1000, histogram_every=3)
    data = batches()
    for i, (x, y) in enumerate(data):
        x, y = x.to(device), y.to(device)
        strict = device.type == "cuda" and i >= len(data) - steps_under_error_mode
        if strict:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            monitor.step(loss)
        finally:
            if strict:
                torch.cuda.set_sync_debug_mode("default")
    monitor.close()
    (run,) = reader.read_logdir(logdir)
    return run


def main():
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    tmp = tempfile.mkdtemp(prefix="th-device-check-")
    try:
        cpu = train(torch.device("cpu"), os.path.join(tmp, "cpu"))
        gpu = train(torch.device("cuda"), os.path.join(tmp, "cuda"), steps_under_error_mode=3)
        print("device: %s; steps under sync debug mode 'error': 3 (none raised)"
              % torch.cuda.get_device_name())
        assert [s.step for s in gpu.steps] == [s.step for s in cpu.steps] == list(range(1, 7))
        worst = 0.0
        for a, b in zip(cpu.steps, gpu.steps):
            np.testing.assert_allclose(b.layer_values, a.layer_values, rtol=1e-3, atol=1e-5,
                                       equal_nan=True, err_msg="step %d" % a.step)
            for k, v in a.global_values.items():
                np.testing.assert_allclose(b.global_values[k], v, rtol=1e-3, atol=1e-5, err_msg=k)
            finite = np.isfinite(a.layer_values)
            diff = np.abs(b.layer_values[finite] - a.layer_values[finite]) / np.maximum(
                np.abs(a.layer_values[finite]), 1e-5)
            worst = max(worst, float(diff.max()))
        print("cuda rows == cpu rows: %d steps x %d layers x 14 columns, largest relative "
              "difference %.2e" % (len(cpu.steps), len(cpu.steps[0].layers), worst))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("device_check=ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
