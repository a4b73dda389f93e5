"""benchmarks/overhead_torch.py runs end to end on a small setting and prints
its contract line (the timings themselves are the benchmark's business,
never asserted here)."""

import os
import re
import sys
import tempfile

import pytest

pytest.importorskip("torch")

from conftest import REPO_ROOT  # noqa: E402

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import overhead_torch  # noqa: E402
import overhead_torch_phases  # noqa: E402

LAST_LINE = re.compile(r"health_monitor_vs_plain=(\d+\.\d\d) summarywriter_vs_plain=(\d+\.\d\d) "
                       r"bytes_per_layer_step=(\d+)")


def test_benchmark_prints_ratios_and_bytes(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the script's logs go
    overhead_torch.main(["--rounds", "1", "--steps", "2", "--instances", "1", "--batch", "4",
                         "--models", "transformer", "--device", "cpu", "--control"])
    lines = capsys.readouterr().out.strip().splitlines()
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    assert float(match[1]) > 0 and float(match[2]) > 0 and int(match[3]) > 0
    for name in ("plain", "health", "summarywriter", "itemlogger", "control"):
        assert any(line.strip().startswith(name) and "ms/step" in line for line in lines), name
    own = [re.search(r"health: the monitor's own time on the training thread (\d+\.\d) ms/step, "
                     r"(\d+\.\d)% of the plain step", line) for line in lines]
    own = [m for m in own if m]
    assert len(own) == 1, lines
    # (the hooks ran and were timed: a monitored step takes some of the
    # thread's time, less than the whole step)
    assert 0.0 < float(own[0][1]) and 0.0 < float(own[0][2]) < 100.0, own[0][0]
    assert any("monitored layers: 26" in line for line in lines)
    # (one block: the interval is that block's ratio, its coverage 0)
    assert any(re.search(r"health: x\d+\.\d{3}, 0% interval of the median .* over 1 blocks: "
                         r"budget 1\.05x not resolved: too few blocks for a 90% interval", line)
               for line in lines), lines
    assert list(tmp_path.iterdir()) == []  # its event files were removed


def test_median_interval_covers_the_median_as_often_as_it_says():
    import numpy as np

    rng = np.random.default_rng(0)
    median = np.log(2.0)  # of an exponential distribution of mean 1
    for n in (5, 10, 20):
        lo, hi, coverage = overhead_torch.median_interval(range(n))
        j = lo + 1  # (the values 0..n-1: the j-th smallest is j - 1)
        assert hi == n - j and coverage >= 0.9  # (symmetric, and at least 90%)
        trials = 20000
        drawn = rng.exponential(size=(trials, n))
        hits = 0
        for row in drawn:
            a, b, _ = overhead_torch.median_interval(row)
            hits += a <= median <= b
        # (20000 trials: the binomial standard error is <= 0.0035)
        assert abs(hits / trials - coverage) < 0.015, (n, hits / trials, coverage)
    # n = 10: the 2nd smallest and 2nd largest, 1 - 2 * 11/1024
    assert overhead_torch.median_interval(range(10)) == (1, 8, 1 - 22 / 1024)
    # too few values for 90%: the extremes, with what they cover
    assert overhead_torch.median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0, 0.75)
    with pytest.raises(ValueError, match="at least one value"):
        overhead_torch.median_interval([])


def test_budget_verdict_says_whether_the_interval_resolves_the_budget():
    verdict = overhead_torch.budget_verdict
    assert verdict(1.02, 1.04, 1.05, 0.98) == "budget 1.05x met"
    assert verdict(1.06, 1.08, 1.05, 0.98) == "budget 1.05x exceeded"
    assert verdict(1.04, 1.06, 1.05, 0.98) == "budget 1.05x not resolved by this run"
    assert verdict(1.02, 1.04, 1.05, 0.75) == (
        "budget 1.05x not resolved: too few blocks for a 90% interval")


def test_the_monitor_s_own_time_counts_its_hooks(tmp_path):
    import torch

    inst = overhead_torch.Instance("transformer", torch.device("cpu"), 0, str(tmp_path))
    try:
        x, _ = overhead_torch.make_batches("transformer", torch.device("cpu"), 2, n=1)[0]
        inst.use("plain")
        inst.model(x)
        assert inst.own_seconds == 0.0  # (no hooks installed for the plain loop)
        inst.use("health")
        inst.model(x)  # a forward pass alone: only the forward hooks ran
        assert inst.own_seconds > 0.0
    finally:
        inst.close()


def test_variants_leave_the_hand_written_loggers_out(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    overhead_torch.main(["--rounds", "2", "--steps", "1", "--instances", "1", "--batch", "4",
                         "--models", "transformer", "--device", "cpu", "--control",
                         "--variants", "health,plain"])
    lines = capsys.readouterr().out.strip().splitlines()
    timed = [line.split()[0] for line in lines if "ms/step" in line and "(x" in line]
    assert timed == ["plain", "health", "control"], lines
    assert any("over 2 blocks" in line for line in lines), lines
    assert lines[-1] == "(no last line: summarywriter not among --variants)"


@pytest.mark.parametrize("variants, says", [("plain,histogram", "unknown variant(s) histogram"),
                                            ("plain,summarywriter", "must include plain and health")])
def test_variants_are_checked(capsys, variants, says):
    with pytest.raises(SystemExit):
        overhead_torch.main(["--variants", variants])
    assert says in capsys.readouterr().err


def test_phases_split_the_step(capsys, tmp_path, monkeypatch):
    """benchmarks/overhead_torch_phases.py times every phase of the step,
    plain and monitored: the monitor's own step is 0 in the plain loop and
    takes time in the monitored one; its event files are removed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    overhead_torch_phases.main(["--model", "transformer", "--rounds", "2", "--steps", "1",
                                "--batch", "4", "--device", "cpu"])
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {}
    for line in lines:
        m = re.match(r"\s+(\w+)\s+plain\s+(\d+\.\d\d) ms/step\s+health\s+(\d+\.\d\d) ms/step", line)
        if m:
            rows[m[1]] = (float(m[2]), float(m[3]))
    assert set(rows) == set(overhead_torch_phases.PHASES), lines
    assert rows["monitor_step"][0] == 0.0 < rows["monitor_step"][1]
    assert rows["forward"][0] > 0 and rows["backward"][0] > 0
    assert re.search(r"added by the monitor's phases .*: [+-]\d+\.\d ms/step, -?\d+\.\d% of the "
                     r"plain step; backward [+-]\d+\.\d ms/step", lines[-1]), lines[-1]
    assert list(tmp_path.iterdir()) == []
