"""Crash safety of ``train_net.py`` under injected faults (real processes, real COCO samples).

* SIGKILL at random moments, and in the middle of a checkpoint write, then ``--resume``: the final
  weights are bitwise those of an uninterrupted run, and no partial file is ever visible under a
  final name.
* Two gloo workers, one raising (or killed) at iteration 2: the launch ends with status 1, naming the
  rank and its error, instead of the other worker waiting in a collective.

Faults come from ``tests/fault_injection/sitecustomize.py`` (active only on its ``PYTHONPATH``).
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from training_utils import REPO_ROOT, make_dataset_root, write_config

FAULTS = Path(__file__).resolve().parent / "fault_injection"
ITERS = 12


@pytest.fixture(scope="module")
def dataset_env(datasets_root, tmp_path_factory):
    root = make_dataset_root(datasets_root, tmp_path_factory.mktemp("datasets"))
    return dict(
        os.environ,
        DETECTRON2_DATASETS=str(root),
        PYTHONPATH=os.pathsep.join([str(FAULTS), str(REPO_ROOT)]),
        OMP_NUM_THREADS="1",  # one thread: every run computes bitwise the same
        PYTHONUNBUFFERED="1",
    )


def _train_command(config: Path, *extra: str):
    return [sys.executable, str(REPO_ROOT / "train_net.py"), "--config-file", str(config), *extra]


def _final_names_are_complete(output_dir: Path) -> None:
    """Every file under a final name is whole: checkpoints are intact zips, ``last_checkpoint``
    names one of them, ``metrics.json`` holds only whole JSON lines."""
    for checkpoint in output_dir.glob("model_*.pth"):
        with zipfile.ZipFile(checkpoint) as archive:
            assert archive.testzip() is None, checkpoint
    last = output_dir / "last_checkpoint"
    if last.exists():
        assert (output_dir / last.read_text()).is_file(), last.read_text()
    metrics = output_dir / "metrics.json"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            json.loads(line)


def _kill_when(command, env, marker: str = "", delay: float = 0.0) -> bool:
    """Start ``command``, wait until a line of its output contains ``marker`` (at once when empty),
    then ``delay`` seconds more, and SIGKILL it. Returns whether the marker was seen; prints what
    was on disk at the kill (seen with ``pytest -s``)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = not marker
    if marker:
        for line in process.stdout:
            if marker in line:
                seen = True
                break
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    output_dir = Path(command[command.index("OUTPUT_DIR") + 1])
    last = output_dir / "last_checkpoint"
    print(f"killed {delay:.2f} s after {marker or 'start'!r}: last_checkpoint="
          f"{last.read_text() if last.exists() else None}, temporaries={[p.name for p in output_dir.glob('.*.tmp')]}")
    return seen


def _model_weights(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_sigkill_at_random_moments_then_resume_is_bitwise_identical(dataset_env, tmp_path):
    config = write_config(tmp_path / "cfg.yaml", output_dir=tmp_path / "ref", iters=ITERS, ckpt=1, test="")
    reference = subprocess.run(_train_command(config), env=dataset_env, capture_output=True, text=True,
                               timeout=900)
    assert reference.returncode == 0, reference.stderr[-3000:]

    run_dir = tmp_path / "killed"
    command = _train_command(config, "--resume", "OUTPUT_DIR", str(run_dir))
    rng = random.Random(0)
    _kill_when(command, dataset_env, delay=rng.uniform(1, 3))  # during start-up
    _final_names_are_complete(run_dir)
    for target in (rng.choice([2, 3]), rng.choice([6, 7])):  # a moment after that checkpoint began
        marker = f"Saving checkpoint to {run_dir / f'model_{target:07d}.pth'}"
        assert _kill_when(command, dataset_env, marker, delay=rng.uniform(0, 0.3))
        _final_names_are_complete(run_dir)
    slow_writes = dict(dataset_env, M2F_FAULT_SLOW_CHECKPOINT="1")  # a checkpoint write takes ~1 s
    assert _kill_when(command, slow_writes, "CHECKPOINT-WRITE-STARTED", delay=rng.uniform(0.05, 0.5))
    assert list(run_dir.glob(".model_*.pth.*.tmp")), "the kill did not land inside a checkpoint write"
    _final_names_are_complete(run_dir)

    resumed = subprocess.run(command, env=dataset_env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from iteration" in resumed.stdout + resumed.stderr
    _final_names_are_complete(run_dir)
    assert not list(run_dir.glob(".*.tmp")), "stale temporary files were not cleaned up"
    expected, got = _model_weights(tmp_path / "ref" / "model_final.pth"), _model_weights(run_dir / "model_final.pth")
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, different[:5]


@pytest.mark.parametrize(
    "fault, expected",
    [("M2F_FAULT_RAISE_AT", "failed with RuntimeError: injected failure at iteration 2"),
     ("M2F_FAULT_KILL_AT", "was killed by SIGKILL")],
)
def test_a_failing_worker_ends_the_launch_with_its_rank_and_error(dataset_env, tmp_path, fault, expected):
    config = write_config(tmp_path / "cfg.yaml", output_dir=tmp_path / "run", iters=6, test="")
    env = dict(dataset_env, **{fault: "1:2"})
    start = time.perf_counter()
    result = subprocess.run(_train_command(config, "--num-gpus", "2"), env=env, capture_output=True, text=True,
                            timeout=600)
    elapsed = time.perf_counter() - start
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: training process rank 1 (pid "), last_line
    assert expected in last_line and last_line.endswith("the other processes were stopped")
    print(f"{fault}: launch ended {elapsed:.1f} s after start (start-up included)")
