"""Windowed inference on long videos (instances linked across windows), and ``demo/demo.py
--video-input`` with a video model (the thin YouTube-VIS fixture weights, ../shared/reference)."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mask2former.config import get_cfg
from mask2former.video.predictor import VideoPredictor, link_windows

REPO = Path(__file__).resolve().parents[1]


def _tube(label, *frames, track_id=None):
    tube = {"label": label, "masks": np.stack(frames), "score": 0.9}
    if track_id is not None:
        tube["track_id"] = track_id
    return tube


def test_link_windows_matches_by_overlap_iou_and_label():
    a, b = np.zeros((2, 8, 8), bool), np.zeros((2, 8, 8), bool)
    a[:, :4, :4] = True
    b[:, 4:, 4:] = True
    shifted = np.roll(a, 1, axis=-1)  # IoU with a: 12 / 20 = 0.6 per frame
    previous = [_tube(1, *a, track_id=5), _tube(2, *b, track_id=9)]
    current = [_tube(2, *b, np.zeros((8, 8), bool)), _tube(1, *shifted, a[0]), _tube(1, *b, b[0])]
    ids, next_id = link_windows(previous, current, overlap=2, next_id=10)
    # b -> 9 (same label, IoU 16/32 = 0.5); shifted a -> 5 (IoU 0.6); the label-1 tube on b's pixels is new.
    assert ids == [9, 5, 10] and next_id == 11
    assert link_windows(previous, current, overlap=0, next_id=3) == ([3, 4, 5], 6)
    ids, _ = link_windows([_tube(1, *a, track_id=0)], [_tube(1, *np.roll(a, 3, axis=-1))], overlap=2, next_id=1)
    assert ids == [1]  # IoU 1/7 < 0.5: a new instance


@pytest.fixture(scope="module")
def fixture_config(reference_dir):
    root = reference_dir / "thin_r50_ytvis2019_video"
    cfg = get_cfg()
    cfg.merge_from_file(str(root / "config.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(root / "model.pkl"),
                         "INPUT.MIN_SIZE_TEST", 160, "TEST.VIDEO_WINDOW_SIZE", 4, "TEST.VIDEO_WINDOW_OVERLAP", 2])
    return cfg


def _panning_frames(datasets_root, num_frames):
    """BGR windows of a real COCO image panning right 8 px per frame (as the fixture's clip)."""
    image = cv2.imread(str(datasets_root / "coco/val2017/000000039769.jpg"))
    return [np.ascontiguousarray(image[60:420, 8 * t: 8 * t + 480]) for t in range(num_frames)]


def test_track_yields_every_frame_once_and_keeps_ids_across_windows(fixture_config, datasets_root):
    predictor = VideoPredictor(fixture_config)
    frames = _panning_frames(datasets_root, 9)  # windows [0, 4), [2, 6), [4, 8), [6, 9)
    results = list(predictor.track(iter(frames)))
    assert len(results) == 9
    assert all(out is f for (out, _), f in zip(results, frames))
    windows = [{x["track_id"] for x in instances} for _, instances in results]
    for _, instances in results:
        for x in instances:
            assert x["mask"].shape == (360, 480) and x["mask"].dtype == bool and x["mask"].any()
    # Smooth motion: tracks of the first window are still there in the last frames.
    assert windows[0] & windows[8], windows
    with pytest.raises(ValueError, match="VIDEO_WINDOW_OVERLAP"):
        cfg = fixture_config.clone()
        cfg.TEST.VIDEO_WINDOW_OVERLAP = 4
        VideoPredictor(cfg)


def test_track_on_a_stream_ending_inside_the_overlap(fixture_config, datasets_root):
    predictor = VideoPredictor(fixture_config)
    assert len(list(predictor.track(iter(_panning_frames(datasets_root, 4))))) == 4  # one full window
    assert len(list(predictor.track(iter(_panning_frames(datasets_root, 2))))) == 2  # shorter than a window


def test_demo_writes_an_overlay_video_with_a_video_model(fixture_config, datasets_root, tmp_path):
    video_in = tmp_path / "clip.avi"
    frames = _panning_frames(datasets_root, 6)
    writer = cv2.VideoWriter(str(video_in), cv2.VideoWriter_fourcc(*"MJPG"), 5, (480, 360))
    for f in frames:
        writer.write(f)
    writer.release()
    out = tmp_path / "out.avi"
    cmd = [sys.executable, str(REPO / "demo/demo.py"), "--config-file", str(tmp_path / "cfg.yaml"),
           "--video-input", str(video_in), "--output", str(out), "--confidence-threshold", "0.3"]
    (tmp_path / "cfg.yaml").write_text(fixture_config.dump())
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reader = cv2.VideoCapture(str(out))
    written = []
    ok, frame = reader.read()
    while ok:
        written.append(frame)
        ok, frame = reader.read()
    reader.release()
    assert len(written) == 6 and written[0].shape == (360, 480, 3)
    # Overlays change the frames (instances scoring >= 0.3 exist in this clip).
    assert np.abs(written[0].astype(int) - frames[0].astype(int)).mean() > 5
    cv2.imwrite(str(tmp_path / "x.jpg"), frames[0])
    proc = subprocess.run(cmd[:4] + ["--input", str(tmp_path / "x.jpg"), "--output", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 1 and "needs --video-input" in proc.stderr
