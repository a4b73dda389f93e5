"""Bucket credentials and endpoint as fsspec `storage_options`, not environment
variables: `HealthCallback`, the tape `HealthMonitor` and `check`, `watch`
and `report` (`--storage-option KEY=VALUE`) against a real S3-compatible
server on 127.0.0.1, with no S3 or AWS variable in the environment.
"""

import argparse
import json
import os
import subprocess

import numpy as np
import pytest

from training_health.cli import storage
from training_health.io import reader

from test_remote_support import PYTHON, s3, s3_server  # noqa: F401  (fixtures)

ENV_NAMES = ("S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
             "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def options_for(server):
    return {"key": "testing", "secret": "testing",
            "client_kwargs": {"endpoint_url": server.endpoint, "region_name": "us-east-1"}}


def cli_options(server):
    return ["--storage-option", "key=testing", "--storage-option", "secret=testing",
            "--storage-option", "client_kwargs.endpoint_url=" + server.endpoint,
            "--storage-option", 'client_kwargs={"region_name": "us-east-1"}']


@pytest.fixture
def no_s3_environment(monkeypatch, tmp_path):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    return dict(os.environ)


def test_option_parsing():
    parser = argparse.ArgumentParser()
    storage.add_argument(parser)
    args = parser.parse_args(["--storage-option", "anon=true", "--storage-option", "key=AKIA:x=y",
                              "--storage-option", "client_kwargs.endpoint_url=http://h:9000",
                              "--storage-option", 'client_kwargs={"region_name": "eu-west-1"}',
                              "--storage-option", "config_kwargs.retries.max_attempts=3"])
    assert storage.options(args) == {
        "anon": True, "key": "AKIA:x=y",
        "client_kwargs": {"endpoint_url": "http://h:9000", "region_name": "eu-west-1"},
        "config_kwargs": {"retries": {"max_attempts": 3}}}
    assert storage.options(parser.parse_args([])) is None
    for bad in ("novalue", "=x", "a..b=1"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--storage-option", bad])


def test_health_callback_and_the_cli_with_storage_options_only(s3, no_s3_environment, tmp_path):
    keras = pytest.importorskip("keras")
    from training_health.keras import HealthCallback

    server, bucket = s3
    url = "s3://%s/runs/fit" % bucket
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    callback = HealthCallback(url, flush_every=5, histogram_every=0, storage_options=options_for(server))
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(64, 4)), rng.integers(0, 2, 64), batch_size=8, epochs=2, verbose=0,
              callbacks=[callback])
    callback.close()
    assert server.keys(bucket, "runs/fit/")
    (run,) = reader.read_logdir(url, storage_options=options_for(server))
    assert [s.step for s in run.steps] == list(range(16))

    logdir = "s3://%s/runs" % bucket
    check = subprocess.run([PYTHON, "-m", "training_health.cli", "check", logdir, "--json"] + cli_options(server),
                           capture_output=True, text=True, timeout=120, env=no_s3_environment)
    assert check.returncode in (0, 1), check.stderr
    assert [r["run"] for r in json.loads(check.stdout)["runs"]] == ["fit"]
    watch = subprocess.run([PYTHON, "-m", "training_health.cli", "watch", logdir, "--once"] + cli_options(server),
                           capture_output=True, text=True, timeout=120, env=no_s3_environment)
    assert watch.returncode == 0, watch.stderr
    assert "fit" in watch.stdout and "step 15" in watch.stdout
    out = tmp_path / "report.html"
    report = subprocess.run([PYTHON, "-m", "training_health.cli", "report", logdir, "-o", str(out)]
                            + cli_options(server), capture_output=True, text=True, timeout=180,
                            env=no_s3_environment)
    assert report.returncode == 0, report.stderr
    assert "1 run: fit" in report.stdout and out.stat().st_size > 0
    # without the options the same command does not reach the server
    check = subprocess.run([PYTHON, "-m", "training_health.cli", "check", logdir],
                           capture_output=True, text=True, timeout=120, env=no_s3_environment)
    assert check.returncode == 2


def test_tape_monitor_with_storage_options(s3, no_s3_environment):
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    from training_health.tf import HealthMonitor

    server, bucket = s3
    url = "s3://%s/tape" % bucket
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD(0.1)
    monitor = HealthMonitor(url, model, optimizer, detectors=None, storage_options=options_for(server))
    x = tf.constant(np.ones((8, 4), np.float32))
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        monitor.record(x, loss, grads)
    monitor.close()
    (run,) = reader.read_logdir(url, storage_options=options_for(server))
    assert [s.step for s in run.steps] == [0, 1, 2]


def test_torch_monitor_with_storage_options(s3, no_s3_environment):
    torch = pytest.importorskip("torch")
    from training_health.torch import HealthMonitor

    server, bucket = s3
    url = "s3://%s/torch" % bucket
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with HealthMonitor(url, model, optimizer, detectors=None, storage_options=options_for(server)) as monitor:
        for _ in range(3):
            optimizer.zero_grad()
            loss = model(torch.ones(8, 4)).square().mean()
            loss.backward()
            optimizer.step()
            monitor.step(loss)
    (run,) = reader.read_logdir(url, storage_options=options_for(server))
    assert [s.step for s in run.steps] == [1, 2, 3]
    with pytest.raises(ValueError, match="storage_options.*received 'endpoint'"):
        HealthMonitor(url, model, optimizer, storage_options="endpoint")


def test_storage_options_must_be_a_dict():
    keras = pytest.importorskip("keras")
    from training_health.keras import HealthCallback

    with pytest.raises(ValueError, match="storage_options.*received 'endpoint'"):
        HealthCallback("s3://bucket/run", storage_options="endpoint")
