"""demo/demo.py end to end in a subprocess: overlays on real images/video and its error exits."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "demo" / "demo.py"
FIXTURE = "thin_r50_coco_panoptic"
IMAGE = "000000039769.jpg"


@pytest.fixture(scope="module")
def fixture_dir(reference_dir) -> Path:
    return reference_dir / FIXTURE


@pytest.fixture(scope="module")
def image_path(datasets_root) -> Path:
    return datasets_root / "coco" / "val2017" / IMAGE


def run_demo(fixture_dir: Path, *args: str, weights: str = None) -> subprocess.CompletedProcess:
    opts = [
        "MODEL.DEVICE",
        "cpu",
        "INPUT.MIN_SIZE_TEST",
        "256",
        "INPUT.MAX_SIZE_TEST",
        "384",
        "MODEL.WEIGHTS",
        weights or str(fixture_dir / "model.pkl"),
    ]
    command = [
        sys.executable,
        str(DEMO),
        "--config-file",
        str(fixture_dir / "config.yaml"),
        *args,
        "--opts",
        *opts,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)


def test_image_overlay(fixture_dir, image_path, tmp_path):
    out_dir = tmp_path / "out"
    result = run_demo(fixture_dir, "--input", str(image_path), "--output", str(out_dir))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "000000039769.png"
    ]  # no temporary files left
    overlay = cv2.imread(str(out_dir / "000000039769.png"))
    original = cv2.imread(str(image_path))
    assert overlay.shape == original.shape
    changed = np.abs(overlay.astype(int) - original.astype(int)).max(axis=2) > 10
    assert (
        changed.mean() > 0.2
    )  # the fixture model predicts two segments covering most of the image


def test_video(fixture_dir, image_path, tmp_path):
    frame = cv2.resize(cv2.imread(str(image_path)), (160, 120))
    video_path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (160, 120))
    for k in range(2):
        writer.write(np.roll(frame, 8 * k, axis=1))
    writer.release()
    out_path = tmp_path / "vis.avi"
    result = run_demo(fixture_dir, "--video-input", str(video_path), "--output", str(out_path))
    assert result.returncode == 0, result.stderr
    video = cv2.VideoCapture(str(out_path))
    frames = []
    ok, current = video.read()
    while ok:
        frames.append(current)
        ok, current = video.read()
    video.release()
    assert len(frames) == 2 and frames[0].shape == (120, 160, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi", "vis.avi"]


def test_corrupt_image(fixture_dir, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 this is not a JPEG" * 50)
    out_dir = tmp_path / "out"
    result = run_demo(fixture_dir, "--input", str(corrupt), "--output", str(out_dir))
    assert result.returncode != 0
    assert "corrupt.jpg" in result.stderr and "Traceback" not in result.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_missing_weights(fixture_dir, image_path, tmp_path):
    weights = tmp_path / "missing_model_final.pkl"
    out_file = tmp_path / "overlay.png"
    result = run_demo(
        fixture_dir, "--input", str(image_path), "--output", str(out_file), weights=str(weights)
    )
    assert result.returncode != 0
    assert "missing_model_final.pkl" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_wrong_config(fixture_dir, image_path, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("MODEL:\n  NOT_A_KEY: 1\n")
    command = [
        sys.executable,
        str(DEMO),
        "--config-file",
        str(config),
        "--input",
        str(image_path),
        "--output",
        str(tmp_path / "out"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode != 0
    assert "bad.yaml" in result.stderr and "NOT_A_KEY" in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_input(fixture_dir, tmp_path):
    result = run_demo(
        fixture_dir, "--input", str(tmp_path / "nope.jpg"), "--output", str(tmp_path / "out")
    )
    assert result.returncode != 0
    assert "nope.jpg" in result.stderr
