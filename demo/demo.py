"""Run a Mask2Former model on images or a video and save the visualized predictions.

Example::

    python demo/demo.py --config-file configs/coco/panoptic/R50.yaml \
        --input input1.jpg "images/*.jpg" --output out_dir/ \
        --opts MODEL.WEIGHTS model_final_94dc52.pkl MODEL.DEVICE cpu

With a video model (``configs/youtubevis_*``), ``--video-input`` runs it on windows of
``TEST.VIDEO_WINDOW_SIZE`` frames (see ``VideoPredictor`` for the memory bound) and instances keep
their colour and ``#id`` across frames.

Each output is written to a temporary file beside its destination and renamed when complete, so an
error never leaves a partial file behind. Errors are reported on stderr with exit status 1.
"""

import argparse
import glob
import logging
import os
import sys
from typing import Callable, List

import cv2
import numpy as np
import torch
import tqdm

from mask2former.config import get_cfg
from mask2former.data.image_io import read_image
from mask2former.engine.custom_datasets import DatasetArgumentParser, configure_datasets, register_datasets
from mask2former.engine.predictor import Predictor
from mask2former.structures import semantic_labels
from mask2former.utils.visualizer import Visualizer
from mask2former.video.predictor import VideoPredictor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}

logger = logging.getLogger("mask2former.demo")


def get_parser() -> argparse.ArgumentParser:
    parser = DatasetArgumentParser(description="Mask2Former demo: save prediction overlays")
    model_source = parser.add_mutually_exclusive_group(required=True)
    model_source.add_argument("--config-file", metavar="FILE", help="path to a config file")
    model_source.add_argument(
        "--exported",
        metavar="DIR",
        help="run an exported model (tools/export_model.py output: model.onnx or model.pt2 and "
        "metadata.json) instead of --config-file",
    )
    parser.add_argument(
        "--backend",
        choices=["onnxruntime", "torch"],
        help="runtime of --exported (default: onnxruntime for model.onnx, torch for model.pt2)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        nargs="+",
        help="input images; each may be a path or a quoted glob like 'dir/*.jpg'",
    )
    source.add_argument("--video-input", help="path to a video file")
    parser.add_argument(
        "--output",
        required=True,
        help="output directory, or output file (an image for a single --input, "
        ".mp4/.avi for a video)",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of the instances drawn when the model has no panoptic output",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pkl MODEL.DEVICE cpu",
    )
    return parser


def setup_cfg(args: argparse.Namespace):
    """Config from ``--config-file`` and ``--opts``, after registering the ``--dataset``s (their
    class names label the overlays when named in DATASETS.TEST).

    Raises:
        FileNotFoundError: the config file does not exist.
        ValueError: the config file or an override names an unknown key or has a bad value.
    """
    if not os.path.isfile(args.config_file):
        raise FileNotFoundError(f"Config file not found: {args.config_file}")
    register_datasets(getattr(args, "datasets", []))
    cfg = get_cfg()
    try:
        cfg.merge_from_file(args.config_file)
    except (KeyError, ValueError, TypeError, AssertionError) as e:
        raise ValueError(f"Invalid config file {args.config_file}: {e}") from e
    try:
        cfg.merge_from_list(args.opts)
    except (KeyError, ValueError, TypeError, AssertionError) as e:
        raise ValueError(f"Invalid --opts {args.opts}: {e}") from e
    for change in configure_datasets(cfg):
        logger.info("Config fitted to the datasets: %s", change)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"MODEL.DEVICE={cfg.MODEL.DEVICE} but CUDA is not available; using cpu")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def expand_inputs(patterns: List[str]) -> List[str]:
    """Paths of the inputs: glob patterns expanded (sorted), plain paths kept.

    Raises:
        FileNotFoundError: a path does not exist or a pattern matches nothing.
    """
    paths = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if any(c in pattern for c in "*?["):
            matches = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not matches:
                raise FileNotFoundError(f"No input file matches {pattern}")
            paths += matches
        elif os.path.isfile(pattern):
            paths.append(pattern)
        else:
            raise FileNotFoundError(f"Input file not found: {pattern}")
    return paths


def output_paths(inputs: List[str], output: str) -> List[str]:
    """One output file per input: ``output`` itself when it is an image path (single input
    only), else ``<output>/<input stem>.png``.

    Raises:
        ValueError: several inputs with an image file as ``output``, or two inputs with the
            same stem.
    """
    if not os.path.isdir(output) and output.lower().endswith(IMAGE_EXTENSIONS):
        if len(inputs) != 1:
            raise ValueError(
                f"--output {output} is a file but there are {len(inputs)} inputs; give a directory"
            )
        return [output]
    paths = [
        os.path.join(output, os.path.splitext(os.path.basename(p))[0] + ".png") for p in inputs
    ]
    if len(set(paths)) != len(paths):
        raise ValueError(f"Inputs with the same file name would overwrite each other in {output}")
    return paths


def visualize(
    image_bgr: np.ndarray, predictions: dict, metadata, confidence_threshold: float
) -> np.ndarray:
    """BGR overlay of the panoptic segmentation if predicted, else of the instances, else of the
    semantic segmentation."""
    visualizer = Visualizer(image_bgr[:, :, ::-1], metadata)
    if "panoptic_seg" in predictions:
        panoptic_seg, segments_info = predictions["panoptic_seg"]
        vis = visualizer.draw_panoptic_seg(panoptic_seg.cpu(), segments_info)
    elif "instances" in predictions:
        vis = visualizer.draw_instance_predictions(
            predictions["instances"].to("cpu"), confidence_threshold
        )
    elif "sem_seg" in predictions:
        vis = visualizer.draw_sem_seg(semantic_labels(predictions["sem_seg"]).cpu())
    else:
        raise ValueError(
            f"The model returned no segmentation to draw (keys: {sorted(predictions)})"
        )
    return np.ascontiguousarray(vis[:, :, ::-1])


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path`` (same extension), then rename
    it to ``path``; the temporary file is removed if ``write`` fails."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    tmp_path = os.path.join(directory, f".{base}.{os.getpid()}.partial{ext}")
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def save_image(path: str, image_bgr: np.ndarray) -> None:
    ok, encoded = cv2.imencode(os.path.splitext(path)[1], image_bgr)
    if not ok:
        raise ValueError(f"OpenCV cannot encode an image as {path}")
    write_atomically(path, lambda tmp: encoded.tofile(tmp))


def run_on_images(
    predictor: Predictor, inputs: List[str], output: str, confidence_threshold: float
) -> None:
    outputs = output_paths(inputs, output)
    for path, out_path in tqdm.tqdm(list(zip(inputs, outputs)), desc="images"):
        image = read_image(path, format="BGR")
        predictions = predictor(image)
        save_image(
            out_path, visualize(image, predictions, predictor.metadata, confidence_threshold)
        )
        logger.info(f"{path} -> {out_path}")


def image_model_overlays(predictor: Predictor, frames, confidence_threshold: float):
    """Overlay of every BGR frame predicted on its own by an image model."""
    for frame in frames:
        yield visualize(frame, predictor(frame), predictor.metadata, confidence_threshold)


def video_model_overlays(predictor, frames, confidence_threshold: float):
    """Overlays of a video model run window by window (``VideoPredictor.track``): an instance keeps
    its colour and ``#id`` across frames."""
    from mask2former.video.visualizer import VideoVisualizer

    for frame, instances in predictor.track(frames):
        visualizer = VideoVisualizer(frame[:, :, ::-1], predictor.metadata)
        vis = visualizer.draw_tracks(instances, confidence_threshold)
        yield np.ascontiguousarray(vis[:, :, ::-1])


def run_on_video(
    predictor: Predictor, video_path: str, output: str, confidence_threshold: float,
    overlays: Callable = image_model_overlays,
) -> None:
    """Write the overlay of every frame of ``video_path`` to a video (``output`` file or directory);
    ``overlays(predictor, frames, confidence_threshold)`` turns the frame stream into overlays.

    Raises:
        FileNotFoundError: the video does not exist.
        ValueError: the video cannot be decoded or the output extension is not .mp4/.avi.
    """
    if not os.path.isfile(video_path):
        raise FileNotFoundError(f"Video file not found: {video_path}")
    if not os.path.isdir(output) and os.path.splitext(output)[1]:
        out_path = output
    else:
        out_path = os.path.join(output, os.path.splitext(os.path.basename(video_path))[0] + ".mp4")
    ext = os.path.splitext(out_path)[1].lower()
    if ext not in VIDEO_CODECS:
        raise ValueError(f"Video output {out_path} must end with one of {sorted(VIDEO_CODECS)}")
    video = cv2.VideoCapture(video_path)
    try:
        ok, frame = video.read()
        if not ok:
            raise ValueError(f"Cannot decode video file {video_path}")
        fps = video.get(cv2.CAP_PROP_FPS) or 30.0
        num_frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None

        def write(tmp_path: str) -> None:
            height, width = frame.shape[:2]
            writer = cv2.VideoWriter(
                tmp_path, cv2.VideoWriter_fourcc(*VIDEO_CODECS[ext]), fps, (width, height)
            )
            if not writer.isOpened():
                raise ValueError(f"OpenCV cannot write a {ext} video to {out_path}")
            def frames():
                current, ok = frame, True
                while ok:
                    yield current
                    ok, current = video.read()

            try:
                with tqdm.tqdm(total=num_frames, desc="frames") as bar:
                    for overlay in overlays(predictor, frames(), confidence_threshold):
                        writer.write(overlay)
                        bar.update(1)
            finally:
                writer.release()

        write_atomically(out_path, write)
    finally:
        video.release()
    logger.info(f"{video_path} -> {out_path}")


def main(argv: List[str] = None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    try:
        inputs = expand_inputs(args.input) if args.input else None
        if args.exported:
            from mask2former.export import ExportedPredictor

            predictor, video_model = ExportedPredictor(args.exported, args.backend), False
        else:
            cfg = setup_cfg(args)
            video_model = cfg.MODEL.META_ARCHITECTURE == "VideoMaskFormer"
            if video_model and inputs is not None:
                raise ValueError("a video model (VideoMaskFormer) needs --video-input")
            predictor = VideoPredictor(cfg) if video_model else Predictor(cfg)
        if inputs is not None:
            run_on_images(predictor, inputs, args.output, args.confidence_threshold)
        else:
            overlays = video_model_overlays if video_model else image_model_overlays
            run_on_video(predictor, args.video_input, args.output, args.confidence_threshold, overlays)
    except (OSError, ValueError, KeyError, ImportError) as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
