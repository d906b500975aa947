"""MirroredStrategy over logical CPU devices and MultiWorkerMirroredStrategy over two local processes.

Each run is a fresh process (tests/scripts/distributed_fit.py): devices and TF_CONFIG must be set
before TensorFlow starts.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # every test starts fresh training processes

SCRIPT = pathlib.Path(__file__).resolve().parent / "scripts" / "distributed_fit.py"


def run(*arguments, env=None, wait=True):
    command = [sys.executable, str(SCRIPT), *arguments]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    if not wait:
        return process
    return finish(process)


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_four_replicas_follow_the_single_device_trajectory():
    single = run("--devices", "1", "--strategy", "default")
    mirrored = run("--devices", "4", "--strategy", "mirrored")
    assert single["replicas"] == 1 and mirrored["replicas"] == 4
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-4)
    np.testing.assert_allclose(
        mirrored["consistency_loss"], single["consistency_loss"], rtol=1e-3, atol=1e-7
    )
    np.testing.assert_allclose(mirrored["teacher"], single["teacher"], rtol=1e-3, atol=1e-5)
    # Synchronized batch norm: the teacher's moving statistics match the single-device run too.
    np.testing.assert_allclose(
        mirrored["teacher_stats"], single["teacher_stats"], rtol=1e-3, atol=1e-5
    )


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_local_workers_train_one_model():
    workers = [f"localhost:{free_port()}", f"localhost:{free_port()}"]
    processes = []
    for index in range(2):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )
        processes.append(run("--strategy", "multi_worker", env=env, wait=False))
    results = [finish(process) for process in processes]
    assert [r["replicas"] for r in results] == [2, 2]
    # One model: both workers end with the same teacher, and train on the same losses.
    np.testing.assert_array_equal(results[0]["teacher"], results[1]["teacher"])
    np.testing.assert_allclose(results[0]["loss"], results[1]["loss"], rtol=1e-6)
    assert np.all(np.isfinite(results[0]["loss"]))
    # The teacher moved away from its initial copy of the student (training happened).
    initial = run("--strategy", "default", "--steps", "0")
    assert not np.allclose(results[0]["teacher"], initial["teacher"])
