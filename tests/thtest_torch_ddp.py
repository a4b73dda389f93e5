"""One process of a DistributedDataParallel run on the CPU (gloo), for
tests/test_torch_ddp.py; also the single-process reference it is compared to.

    python tests/thtest_torch_ddp.py RANK WORLD PORT LOGDIR [stop]

Every process trains the same model (seeded) on its share of each global
batch (rank r takes examples r::WORLD... in blocks: rank r the r-th block)
with a HealthMonitor; rank 0 writes LOGDIR.
"""

import sys

import torch
from torch import nn

import training_health.torch as tht

STEPS = 3
GLOBAL_BATCH = 12


def make_model():
    torch.manual_seed(0)
    # (no BatchNorm: under DDP each process normalizes its own share)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 16),
                         nn.Tanh(), nn.Linear(16, 4))


def global_batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=g) * 3,
             torch.randint(0, 4, (GLOBAL_BATCH,), generator=g)) for _ in range(STEPS)]


def train(model, logdir, rank=0, world=1):
    """Trains STEPS steps on this rank's block of each global batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    monitor = tht.HealthMonitor(logdir, model, optimizer, activation_examples=None,
                                histogram_every=0, flush_every=1)
    share = GLOBAL_BATCH // world
    for x, y in global_batches():
        x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        monitor.step(loss)
    monitor.close()
    return monitor


STOP_STEPS = 20
NAN_STEP = 3  # with `stop`: rank 0's share of this step's batch is NaN


def train_until_stop(model, logdir, rank, world):
    """A loop that leaves on `stop_requested` (stop_on=["nan_inf"]); only
    rank 0 sees the NaN inputs, and only it raises alerts."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = tht.HealthMonitor(logdir, model, optimizer, histogram_every=0, flush_every=2,
                                stop_on=["nan_inf"])
    g = torch.Generator().manual_seed(2)
    for step in range(1, STOP_STEPS + 1):
        x = torch.randn(4, 3, 8, 8, generator=g)
        y = torch.randint(0, 4, (4,), generator=g)
        if step == NAN_STEP and rank == 0:
            x[0] = float("nan")
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        monitor.step()
        if rank == 0:
            # (its rows read and checked now, not whenever the background
            # thread gets to them: the alert's step does not depend on the
            # machine's speed)
            monitor.flush()
        if monitor.stop_requested:
            break
    monitor.close()
    print("rank %d left the loop after step %d" % (rank, step))
    return monitor


def main(rank, world, port, logdir, mode="statistics"):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank,
                            world_size=world)
    model = nn.parallel.DistributedDataParallel(make_model())
    monitor = (train_until_stop if mode == "stop" else train)(model, logdir, rank, world)
    dist.barrier()
    dist.destroy_process_group()
    print("rank %d done, writes: %s" % (rank, monitor._host is not None))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:6])
