"""PyTorch and TensorFlow in one process: `training_health.torch` imported
after TensorFlow must not abort the interpreter.

With a CUDA build of PyTorch (the default `pip install torch` on Linux),
importing torch._dynamo loads triton, whose LLVM clashes with TensorFlow's:
the process aborts ("LLVM ERROR: inconsistency in registered CommandLine
options"). The PyTorch capture used to import torch._dynamo when imported.
On a CPU-only build (no triton) the same script checks that the capture
still works next to TensorFlow.
"""

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("tensorflow")

SCRIPT = textwrap.dedent(r"""
    import importlib.util, json, sys, tempfile
    import tensorflow  # first, as a script that uses both frameworks may do
    import torch
    from training_health.io import reader
    from training_health.torch import HealthMonitor

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    logdir = tempfile.mkdtemp()
    with HealthMonitor(logdir, model, optimizer, detectors=None) as monitor:
        for _ in range(3):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 4)),
                                                     torch.randint(0, 2, (8,)))
            loss.backward()
            optimizer.step()
            monitor.step(loss)
    run, _ = reader.read_run(logdir)
    print(json.dumps({"steps": len(run.steps),
                      "triton": importlib.util.find_spec("triton") is not None,
                      "dynamo": "torch._dynamo" in sys.modules}))
""")


PLAIN = textwrap.dedent(r"""
    import tensorflow
    import torch
    torch.optim.SGD(torch.nn.Linear(4, 2).parameters(), 0.1)
""")


def test_pytorch_capture_imported_after_tensorflow_runs():
    plain = subprocess.run([sys.executable, "-c", PLAIN], capture_output=True, text=True,
                           timeout=300, check=False)
    if plain.returncode != 0:
        # Some PyTorch builds (2.15 with triton) import torch._dynamo when an
        # optimizer is made: then TensorFlow and PyTorch cannot share a
        # process at all, with or without Training Health.
        pytest.skip("this PyTorch cannot make an optimizer after TensorFlow is imported "
                    "(status %d): %s" % (plain.returncode, plain.stderr.strip()[-200:]))
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["steps"] == 3
    if out["triton"]:  # the import that would have aborted did not happen
        assert not out["dynamo"]
