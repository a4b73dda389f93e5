"""Overhead of the PyTorch HealthMonitor against a plain loop and hand-written loggers.

Trains each benchmark model four ways in ONE process: each of `--instances`
models is trained by the four variants in turn, a block of steps each,
round after round (so machine noise hits all of them alike, and all run on
the same models: identical models in one process differ by several % per
step for their whole life). A variant's ratio is the median over its
blocks of the block's time over the plain block of the same model and
round:

  plain         the training loop alone
  health        + training_health.torch.HealthMonitor (statistics every step)
  summarywriter + torch.utils.tensorboard.SummaryWriter.add_histogram of every
                  parameter's gradient, every step
  itemlogger    + each layer's gradient norm as a scalar, every step
                  (`.item()` per layer, then SummaryWriter.add_scalar)
  control       (with --control) the plain loop again, measured as a
                  variant: its ratio, which should be 1, shows what this
                  machine's noise and the block order read as overhead

`--variants plain,health` (plain and health always among them) leaves the
hand-written loggers out: a run that spends all its time on the monitor's
ratio (more blocks of it in the same time, a narrower interval). Such a run
prints no last line (it has no summarywriter ratio).

Models: `resnet18` (a ResNet-18: 4 stages of 2 basic blocks, BatchNorm, 11.2M
parameters, on 32x32 images) and `transformer` (a small nn.TransformerEncoder
classifier: 4 layers, d_model 256, 4 heads, sequences of 64 tokens), both
trained with SGD + momentum (ResNet) or AdamW (Transformer). Runs on CUDA when
a GPU is visible (`--device` to choose), else on the CPU; needs only PyTorch,
tensorboard and numpy (and this package).

A block of `--steps` steps is timed from before the first forward pass to
after the logger has written everything it was given (its background work
is charged to it, not to the variant that runs next), with the device
synchronised at both ends of the block (not inside it). Prints, per model, the median time per step of each
variant and the ratios to plain, and the bytes the HealthMonitor wrote per
monitored layer per step (its event files go to a temporary folder, removed
at the end). The health ratio comes with a distribution-free interval for
its median (order statistics of the block ratios, `median_interval`) and
what that says of the budget (1.05x on a CPU, 1.03x on a GPU): met (the
whole interval below it), exceeded (the whole interval above it) or not
resolved by this run (more rounds or instances narrow it; with fewer than
5 blocks no interval reaches 90%). It also prints the monitor's own time on
the training thread (its hooks, `step()` and the block's closing `flush()`,
timed call by call in the health blocks; not the reads its background
thread makes every `flush_every` steps, about 0.5 ms a step for the
ResNet-18 on a CPU) as a share of the plain step: a
figure that the machine's noise barely moves, and a lower bound of the
overhead (it leaves out what the hooks cost the training's own kernels,
e.g. in the caches; on a GPU it is host time, the kernels it launches run
asynchronously). The last line holds the
largest ratio over the models (the budget must hold on each):

  health_monitor_vs_plain=R1 summarywriter_vs_plain=R2 bytes_per_layer_step=B

Usage: python benchmarks/overhead_torch.py [--rounds 5] [--steps 20] [--instances 2]
       [--models resnet18,transformer] [--batch 32] [--device cpu|cuda] [--control]
       [--variants plain,health,summarywriter,itemlogger]
"""

import argparse
import math
import os
import shutil
import statistics
import tempfile
import time

import torch
from torch import nn

import training_health.torch as tht


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 images (3x3 stem, no max-pool), 10 classes."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyTransformer(nn.Module):
    """Token embedding + position embedding, 4 encoder layers, mean-pool, 10 classes."""

    def __init__(self, vocab=1000, d_model=256, heads=4, depth=4, seq=64, classes=10):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.zeros(1, seq, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens) + self.pos).mean(dim=1))


def make(kind, device, seed):
    torch.manual_seed(seed)
    if kind == "resnet18":
        model = ResNet18().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    elif kind == "transformer":
        model = TinyTransformer().to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    else:
        raise ValueError("unknown model %r; use resnet18 or transformer" % (kind,))
    return model, optimizer


def make_batches(kind, device, batch, n=8):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        if kind == "resnet18":
            x = torch.randn(batch, 3, 32, 32, generator=g)
        else:
            x = torch.randint(0, 1000, (batch, 64), generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        out.append((x.to(device), y.to(device)))
    return out


VARIANTS = ("plain", "health", "summarywriter", "itemlogger")
# The A/A variant (--control): the plain loop, timed as a variant.
CONTROL = "control"
# The monitor's overhead budget: on a CPU, and the goal on a GPU.
BUDGET = {"cpu": 1.05, "cuda": 1.03}
# The probability the interval of a ratio's median is asked to have.
CONFIDENCE = 0.9


def median_interval(values, confidence=CONFIDENCE):
    """(lo, hi, coverage): a distribution-free interval for the median of
    the distribution `values` were drawn from, by order statistics: the
    j-th smallest and j-th largest value, j the largest with
    P(j <= Binomial(n, 1/2) <= n - j) >= confidence. `coverage` is that
    probability (below `confidence` only when even the smallest and
    largest values do not reach it: few values)."""
    x = sorted(values)
    n = len(x)
    if n == 0:
        raise ValueError("median_interval needs at least one value; received none")

    def coverage(j):  # P(j <= B <= n - j), B ~ Binomial(n, 1/2)
        return sum(math.comb(n, i) for i in range(j, n - j + 1)) / 2.0 ** n

    j = 1
    while j + 1 <= n - j and coverage(j + 1) >= confidence:
        j += 1
    return x[j - 1], x[n - j], coverage(j)


def budget_verdict(lo, hi, budget, coverage, confidence=CONFIDENCE):
    """What an interval for a ratio's median (`median_interval`) says of a budget."""
    if coverage < confidence:
        return "budget %.2fx not resolved: too few blocks for a %.0f%% interval" % (
            budget, 100 * confidence)
    if hi <= budget:
        return "budget %.2fx met" % budget
    if lo > budget:
        return "budget %.2fx exceeded" % budget
    return "budget %.2fx not resolved by this run" % budget


class Instance:
    """One model and optimizer, trained by every variant in turn.

    The variants share the model (its memory, its place in the caches):
    two identical models in one process can differ by several % per step
    for their whole life, more than the budget, so a variant on a model of
    its own would measure the model's luck as much as its logging. Each
    logger is attached to the model only during its own variant's blocks
    (the monitor's hooks are installed for a health block and removed
    after it, outside the timed part)."""

    def __init__(self, kind, device, seed, logdir):
        from torch.utils.tensorboard import SummaryWriter

        self.model, self.optimizer = make(kind, device, seed)
        self.monitor = tht.HealthMonitor(os.path.join(logdir, "health"), self.model, self.optimizer,
                                         detectors="default")
        self.own_seconds = 0.0  # the monitor's time on this thread (see `_time_monitor`)
        self._time_monitor()
        self._monitor_step = self._timed(self.monitor.step)
        self._monitor_flush = self._timed(self.monitor.flush)
        self._attach_monitor(False)
        self.writers = {n: SummaryWriter(os.path.join(logdir, n)) for n in ("summarywriter", "itemlogger")}
        self.named = [(n, p) for n, p in self.model.named_parameters()]
        self.layers = {}
        for n, p in self.named:
            self.layers.setdefault(n.rsplit(".", 1)[0], []).append(p)
        self.variant = "plain"
        self.step_count = 0
        self.health_steps = 0

    def _timed(self, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.own_seconds += time.perf_counter() - t0
        return timed

    def _time_monitor(self):
        # Each hook's target is looked up when the hooks are installed
        # (`_attach_monitor`), so the timed ones are installed from then on;
        # `step()` and `flush()` are called through timed wrappers of their own.
        # (A timer costs well under a microsecond a call, ~60 calls a step.)
        program = self.monitor._program
        for name in program.HOOK_METHODS:  # (the methods its hooks call)
            setattr(program, name, self._timed(getattr(program, name)))

    def _attach_monitor(self, on):
        # (the monitor's hooks on and off between blocks: a benchmark's need,
        # through the program that owns them)
        program = self.monitor._program
        program.remove()
        if on:
            program._install()

    def use(self, variant):
        """Switches to a variant (between blocks, not timed)."""
        known = VARIANTS + (CONTROL,)
        if variant not in known:
            raise ValueError("unknown variant %r; use one of %s" % (variant, known))
        if (variant == "health") != (self.variant == "health"):
            self._attach_monitor(variant == "health")
        self.variant = variant

    def train_step(self, x, y):
        self.optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.step_count += 1
        if self.variant == "health":
            self._monitor_step(loss)
            self.health_steps += 1
        elif self.variant == "summarywriter":
            for n, p in self.named:
                self.writers[self.variant].add_histogram("grad/" + n, p.grad, self.step_count)
        elif self.variant == "itemlogger":
            for layer, params in self.layers.items():
                norm = torch.sqrt(sum(p.grad.detach().float().square().sum() for p in params))
                self.writers[self.variant].add_scalar("grad_norm/" + layer, norm.item(), self.step_count)

    def flush(self):
        """Waits until everything the current variant logged is written (the
        monitor's device rows read, checked and written; a SummaryWriter's
        queue)."""
        if self.variant == "health":
            self._monitor_flush()
        elif self.variant in self.writers:
            self.writers[self.variant].flush()

    def close(self):
        self.monitor.close()
        for w in self.writers.values():
            w.close()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(kind, args, device, tmp):
    names = list(args.variants) + ([CONTROL] if args.control else [])
    instances = [Instance(kind, device, seed=i, logdir=os.path.join(tmp, kind, str(i)))
                 for i in range(args.instances)]
    batches = make_batches(kind, device, args.batch)
    for inst in instances:  # warm-up: allocator, cudnn autotune, the monitor's first step
        for n in names:
            inst.use(n)
            for x, y in batches[:3]:
                inst.train_step(x, y)
            inst.flush()
    sync(device)
    for inst in instances:
        inst.own_seconds = 0.0  # (the timed blocks' only)
    times = {n: [] for n in names}
    per_instance = {n: [[] for _ in range(args.instances)] for n in names}
    for r in range(args.rounds):
        # (the order of the variants turns from round to round: none always
        # follows the same one)
        order = names[r % len(names):] + names[:r % len(names)]
        for i, inst in enumerate(instances):
            for n in order:
                inst.use(n)
                sync(device)
                t0 = time.perf_counter()
                for s in range(args.steps):
                    x, y = batches[s % len(batches)]
                    inst.train_step(x, y)
                inst.flush()  # its logs written: no background work left for the next variant
                sync(device)
                per_step = (time.perf_counter() - t0) / args.steps * 1000.0
                times[n].append(per_step)
                per_instance[n][i].append(per_step)
    own_ms = sum(inst.own_seconds for inst in instances) / (len(times["health"]) * args.steps) * 1000.0
    steps = sum(inst.health_steps for inst in instances)
    layers = len(instances[0].monitor._program.layers)
    for inst in instances:  # (every row written before the size is read)
        inst.monitor.flush()
    size = sum(os.path.getsize(os.path.join(d, f)) for inst in instances
               for d, _, files in os.walk(inst.monitor.logdir) for f in files)
    for inst in instances:
        inst.close()
    medians = {n: statistics.median(t) for n, t in times.items()}
    # Each block against the plain block of the same instance and round (the
    # closest in time on the same model), the median of those ratios.
    block_ratios = {n: [t / p for t, p in zip(times[n], times["plain"])] for n in names}
    ratios = {n: statistics.median(r) for n, r in block_ratios.items()}
    print("%s on %s, batch %d, %d rounds x %d instances x %d steps per variant" % (
        kind, device, args.batch, args.rounds, args.instances, args.steps))
    for n in names:
        each = " ".join("%.1f" % statistics.median(t) for t in per_instance[n])
        print("  %-14s %8.2f ms/step  (x%.3f)  per instance: %s" % (n, medians[n], ratios[n], each))
    lo, hi, cover = median_interval(block_ratios["health"])
    budget = BUDGET["cuda" if device.type == "cuda" else "cpu"]
    print("  health: x%.3f, %.0f%% interval of the median x%.3f-x%.3f over %d blocks: %s" % (
        ratios["health"], 100 * cover, lo, hi, len(block_ratios["health"]),
        budget_verdict(lo, hi, budget, cover)))
    print("  health: the monitor's own time on the training thread %.1f ms/step, %.1f%% of the "
          "plain step" % (own_ms, 100.0 * own_ms / medians["plain"]))
    print("  monitored layers: %d, bytes per layer per step: %.0f" % (layers, size / (layers * steps)))
    return ratios["health"], ratios.get("summarywriter"), size / (layers * steps)


def variant_list(text):
    """The --variants argument: known names, plain and health among them,
    in the order of VARIANTS."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError("unknown variant(s) %s; choose from %s (the A/A control "
                                         "is --control)" % (", ".join(unknown), ",".join(VARIANTS)))
    if "plain" not in names or "health" not in names:
        raise argparse.ArgumentTypeError("--variants must include plain and health; received %r"
                                         % text)
    return [n for n in VARIANTS if n in names]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--models", default="resnet18,transformer")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--control", action="store_true",
                        help="also time the plain loop as a variant (an A/A check of the noise)")
    parser.add_argument("--variants", type=variant_list, default=list(VARIANTS),
                        help="the variants to time, comma-separated (default: %s); plain and "
                             "health always among them" % ",".join(VARIANTS))
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print("device: %s" % torch.cuda.get_device_name(device))
    else:
        print("device: cpu, %d threads" % torch.get_num_threads())
    tmp = tempfile.mkdtemp(prefix="th-bench-torch-")
    try:
        results = [bench_model(kind, args, device, tmp) for kind in args.models.split(",")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "summarywriter" not in args.variants:
        print("(no last line: summarywriter not among --variants)")
        return
    print("health_monitor_vs_plain=%.2f summarywriter_vs_plain=%.2f bytes_per_layer_step=%d" % (
        max(r[0] for r in results), max(r[1] for r in results), round(max(r[2] for r in results))))


if __name__ == "__main__":
    main()
