"""Export to ONNX / torch.export and the exported-model runtime, against the PyTorch model on the
parity fixtures' real images (../shared/reference, ../shared/data/datasets).

Each fixture is exported once (ONNX, traced at another size than those tested) and that one file
is run by ONNX Runtime at two input sizes: the fixture's own model input, and a batch of the three
images resized to another scale and padded together (dynamic batch, height and width, padding by
the runtime). Raw outputs must agree within the fixture tolerance (1e-4 absolute, 1e-3 relative
above 1), post-processed outputs exactly except at near-ties (top two within 1e-5).
"""
import json
import subprocess
import sys
from pathlib import Path

import cv2

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mask2former.config import get_cfg
from mask2former.modeling.build import build_model
from mask2former.modeling.postprocessing import sem_seg_postprocess

onnxruntime = pytest.importorskip("onnxruntime", reason='needs the "export" extra (onnx, onnxruntime)')
pytest.importorskip("onnx", reason='needs the "export" extra (onnx, onnxruntime)')

from mask2former.export import (  # noqa: E402
    ExportedMaskFormer,
    ExportedPredictor,
    ExportError,
    check_exportable,
    export_model,
    read_metadata,
)

FIXTURES = ["thin_r50_coco_panoptic", "thin_swin_coco_instance", "thin_r50_ade20k_semantic"]
TIE_EPS = 1e-5
# second test size: short edge / long edge limits (the fixtures' inputs are 256 / 384)
SECOND_RESIZE = (320, 480)
REPO = Path(__file__).resolve().parents[1]


def _fixture_cfg(root):
    cfg = get_cfg()
    cfg.merge_from_file(str(root / "config.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(root / "model.pkl")])
    return cfg


def _load_model(cfg):
    from mask2former.checkpoint import Checkpointer

    model = build_model(cfg).eval()
    Checkpointer(model).load(cfg.MODEL.WEIGHTS)
    return model


def _assert_close(name, actual, expected):
    diff = (actual - expected).abs()
    bound = torch.maximum(torch.full_like(expected, 1e-4), 1e-3 * expected.abs())
    assert bool((diff <= bound).all()), f"{name}: max abs diff {diff.max().item():.3g}"


def _image_path(datasets_root, fixture, image_id):
    if "ade20k" in fixture:
        return datasets_root / "ADEChallengeData2016" / "images" / "validation" / f"{image_id}.jpg"
    return datasets_root / "coco" / "val2017" / f"{image_id}.jpg"


@pytest.fixture(scope="module", params=FIXTURES)
def exported(request, reference_dir, datasets_root, tmp_path_factory):
    """(fixture name, PyTorch model, ONNX runtime, inputs at the two sizes)."""
    from mask2former.data.image_io import read_image
    from mask2former.data.transforms import ResizeShortestEdge

    fixture = request.param
    root = reference_dir / fixture
    cfg = _fixture_cfg(root)
    model = _load_model(cfg)
    out_dir = tmp_path_factory.mktemp(fixture)
    path, metadata = export_model(cfg, model, "onnx", out_dir)
    assert path.name == "model.onnx" and metadata["input"]["channel_format"] == cfg.INPUT.FORMAT
    runtime = ExportedMaskFormer(out_dir)

    paths = sorted(root.glob("*.npz"))
    fixture_inputs, resized_inputs = [], []
    resize = ResizeShortestEdge(*SECOND_RESIZE)
    for npz_path in paths:
        npz = np.load(npz_path)
        height, width = int(npz["height"]), int(npz["width"])
        fixture_inputs.append({"image": torch.from_numpy(npz["image"]), "height": height, "width": width})
        image = read_image(_image_path(datasets_root, fixture, npz_path.stem), format=cfg.INPUT.FORMAT)
        assert image.shape[:2] == (height, width)
        resized = resize.get_transform(image).apply_image(image)
        resized_inputs.append(
            {"image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))), "height": height, "width": width}
        )
    return fixture, model, runtime, fixture_inputs, resized_inputs


def _raw(model, inputs):
    """PyTorch's raw head outputs on ``inputs`` (normalised and zero-padded by the model)."""
    with torch.no_grad():
        out = model.sem_seg_head(model.backbone(model.preprocess_image(inputs).tensor))
    return out["pred_logits"], out["pred_masks"]


def _compare_postprocessed(model, expected, got, mask_cls, mask_logits, where):
    """ONNX Runtime's post-processed outputs vs PyTorch's, equal except at near-ties."""
    assert set(got) == set(expected), where
    if "sem_seg" in expected:
        sem, sem_ort = expected["sem_seg"], got["sem_seg"]
        assert sem_ort.shape == sem.shape
        top2 = sem.topk(2, dim=0).values
        differ = sem.argmax(0) != sem_ort.argmax(0)
        assert not (differ & ((top2[0] - top2[1]) > TIE_EPS)).any(), f"{where}: semantic argmax differs"
        _assert_close(f"{where} sem_seg", sem_ort, sem)
    if "panoptic_seg" in expected:
        (seg, info), (seg_ort, info_ort) = expected["panoptic_seg"], got["panoptic_seg"]
        assert seg_ort.dtype == seg.dtype == torch.int32 and info_ort == info, where
        scores, labels = F.softmax(mask_cls, -1).max(-1)
        keep = labels.ne(mask_cls.shape[-1] - 1) & (scores > model.object_mask_threshold)
        prob = mask_logits[keep].sigmoid()
        ambiguous = (prob - 0.5).abs().le(TIE_EPS).any(0)
        if prob.shape[0] > 1:
            top2 = (scores[keep].view(-1, 1, 1) * prob).topk(2, dim=0).values
            ambiguous |= (top2[0] - top2[1]).le(TIE_EPS)
        assert not ((seg != seg_ort) & ~ambiguous).any(), f"{where}: panoptic ids differ away from near-ties"
    if "instances" in expected:
        inst, inst_ort = expected["instances"], got["instances"]
        assert inst_ort.image_size == inst.image_size
        assert torch.equal(inst_ort.pred_classes, inst.pred_classes), where
        torch.testing.assert_close(inst_ort.scores, inst.scores, atol=1e-4, rtol=1e-3)
        assert torch.equal(inst_ort.pred_boxes.tensor, inst.pred_boxes.tensor)
        ambiguous = mask_logits.abs().le(TIE_EPS).any(0)
        differ = inst_ort.pred_masks != inst.pred_masks
        assert not (differ & ~ambiguous).any(), f"{where}: instance masks differ away from near-ties"


def _check_batch(model, runtime, inputs, where):
    batch = runtime.pad([x["image"].float() for x in inputs])
    logits, masks = runtime.run(batch.tensor)
    ref_logits, ref_masks = _raw(model, inputs)
    assert logits.shape == ref_logits.shape and masks.shape == ref_masks.shape, where
    _assert_close(f"{where} pred_logits", logits, ref_logits)
    _assert_close(f"{where} pred_masks", masks, ref_masks)

    with torch.no_grad():
        expected = model(inputs)
    got = runtime(inputs)
    padded = F.interpolate(ref_masks, size=batch.tensor.shape[-2:], mode="bilinear", align_corners=False)
    for i, x in enumerate(inputs):
        mask_logits = sem_seg_postprocess(padded[i], batch.image_sizes[i], x["height"], x["width"])
        _compare_postprocessed(model, expected[i], got[i], ref_logits[i], mask_logits, f"{where}[{i}]")
    return logits


def test_onnx_matches_pytorch_at_fixture_size(exported, reference_dir):
    fixture, model, runtime, fixture_inputs, _ = exported
    for i, x in enumerate(fixture_inputs):
        logits = _check_batch(model, runtime, [x], f"{fixture} fixture size, image {i}")
        npz = np.load(sorted((reference_dir / fixture).glob("*.npz"))[i])
        _assert_close(f"{fixture} vs published pred_logits", logits[0], torch.from_numpy(npz["pred_logits"]))


def test_onnx_matches_pytorch_at_second_size_batched(exported):
    fixture, model, runtime, _, resized_inputs = exported
    sizes = {tuple(x["image"].shape[-2:]) for x in resized_inputs}
    assert all(min(s) == SECOND_RESIZE[0] or max(s) == SECOND_RESIZE[1] for s in sizes)
    _check_batch(model, runtime, resized_inputs, f"{fixture} second size, batch of 3")


def test_metadata_is_self_contained(exported):
    fixture, model, runtime, _, _ = exported
    meta = runtime.metadata
    assert meta["postprocessing"]["panoptic_on"] == model.panoptic_on
    assert meta["num_classes"] == model.sem_seg_head.num_classes
    dataset = meta["dataset"]
    names = dataset.get("stuff_classes") or dataset.get("thing_classes")
    assert len(names) == model.sem_seg_head.num_classes
    if model.panoptic_on:
        assert meta["postprocessing"]["thing_classes"] == model.thing_classes
    json.dumps(meta)  # plain JSON


def test_exported_predictor_matches_predictor(reference_dir, datasets_root, tmp_path):
    """Same resize, channel order and output format as the PyTorch Predictor, from the exported
    directory alone."""
    from mask2former import Predictor
    from mask2former.data.image_io import read_image

    root = reference_dir / "thin_r50_ade20k_semantic"
    cfg = _fixture_cfg(root)
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", 256, "INPUT.MAX_SIZE_TEST", 384])
    predictor = Predictor(cfg)
    export_model(cfg, predictor.model, "onnx", tmp_path)
    exported = ExportedPredictor(tmp_path)
    assert exported.metadata.stuff_classes == predictor.metadata.stuff_classes
    image_path = _image_path(datasets_root, "ade20k", "ADE_val_00000002")
    image = read_image(image_path, format="BGR")
    expected, got = predictor(image), exported(image)
    assert got["sem_seg"].shape == expected["sem_seg"].shape == (150, *image.shape[:2])
    _assert_close("ExportedPredictor sem_seg", got["sem_seg"], expected["sem_seg"])

    # demo/demo.py runs the exported directory alone
    out_path = tmp_path / "overlay.png"
    command = [sys.executable, str(REPO / "demo" / "demo.py"), "--exported", str(tmp_path),
               "--input", str(image_path), "--output", str(out_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    overlay = cv2.imread(str(out_path))
    assert overlay.shape == image.shape and not np.array_equal(overlay, image)


def test_exported_program_matches_pytorch(reference_dir, tmp_path):
    root = reference_dir / "thin_r50_coco_panoptic"
    cfg = _fixture_cfg(root)
    model = _load_model(cfg)
    path, metadata = export_model(cfg, model, "exported-program", tmp_path)
    assert path.name == "model.pt2" and metadata["format"] == "exported-program"
    runtime = ExportedMaskFormer(tmp_path)
    assert runtime.backend == "torch"
    npz_paths = sorted(root.glob("*.npz"))[:2]
    inputs = [{"image": torch.from_numpy(np.load(p)["image"])} for p in npz_paths]
    for batch in ([inputs[0]], inputs):  # 1 x 256 x 352 (padded), then 2 x 256 x 384
        logits, masks = runtime.run(runtime.pad([x["image"].float() for x in batch]).tensor)
        ref_logits, ref_masks = _raw(model, batch)
        _assert_close("exported program pred_logits", logits, ref_logits)
        _assert_close("exported program pred_masks", masks, ref_masks)


def test_full_size_r50_panoptic_runs_in_onnxruntime(datasets_root, tmp_path):
    """The published R50 COCO panoptic architecture (random weights) exports and runs on a real
    image at 800 x 1200."""
    from mask2former.data.image_io import read_image

    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "coco" / "panoptic" / "R50.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    export_model(cfg, model, "onnx", tmp_path)
    runtime = ExportedMaskFormer(tmp_path)
    image = read_image(datasets_root / "coco" / "val2017" / "000000039769.jpg", format="RGB")
    image = cv2.resize(image, (1200, 800), interpolation=cv2.INTER_LINEAR)
    (result,) = runtime([{"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))}])
    assert result["sem_seg"].shape == (133, 800, 1200) and torch.isfinite(result["sem_seg"]).all()
    assert result["panoptic_seg"][0].shape == (800, 1200)
    assert result["instances"].image_size == (800, 1200)


def test_unexportable_configs_name_the_option(reference_dir, monkeypatch, tmp_path):
    cfg = _fixture_cfg(reference_dir / "thin_r50_coco_panoptic")
    aug = cfg.clone()
    aug.merge_from_list(["TEST.AUG.ENABLED", True])
    with pytest.raises(ExportError, match="TEST.AUG.ENABLED"):
        check_exportable(aug)
    video = cfg.clone()
    video.MODEL.META_ARCHITECTURE = "VideoMaskFormer"
    with pytest.raises(ExportError, match="MODEL.META_ARCHITECTURE"):
        check_exportable(video)
    swin = _fixture_cfg(reference_dir / "thin_swin_coco_instance")
    check_exportable(swin, "onnx")
    with pytest.raises(ExportError, match="MODEL.BACKBONE.NAME='D2SwinTransformer'.*--format onnx"):
        check_exportable(swin, "exported-program")
    monkeypatch.setenv("MASK2FORMER_MSDA_IMPL", "compiled")
    with pytest.raises(ExportError, match="MASK2FORMER_MSDA_IMPL='compiled'.*no ONNX equivalent"):
        check_exportable(cfg)
    monkeypatch.delenv("MASK2FORMER_MSDA_IMPL")
    with pytest.raises(ExportError, match="opset 13"):
        export_model(cfg, build_model(cfg), "onnx", tmp_path, opset=13)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_runtime_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        ExportedMaskFormer(tmp_path)
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_metadata(tmp_path)


def test_benchmark_compares_backends(reference_dir, datasets_root, tmp_path):
    from mask2former.utils.benchmark import parse_setting

    assert parse_setting("backend=onnxruntime,threads=1", "B").backend == "onnxruntime"
    with pytest.raises(ValueError, match="backend must be one of"):
        parse_setting("backend=tensorrt", "B")

    root = reference_dir / "thin_r50_coco_panoptic"
    output = tmp_path / "results.json"
    command = [
        sys.executable, str(REPO / "tools" / "benchmark.py"), "--device", "cpu", "--output", str(output),
        "--config-file", str(root / "config.yaml"), "--task", "inference",
        "--images", str(datasets_root / "coco" / "val2017" / "000000039769.jpg"),
        "--num-images", "1", "--warmup", "0", "--compare", "backend=torch", "backend=onnxruntime",
        "MODEL.WEIGHTS", str(root / "model.pkl"), "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "384",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(output.read_text())
    rows = {r["setting"]: r["metrics"] for r in report["results"]}
    assert rows["A"]["backend"] == "torch" and rows["B"]["backend"] == "onnxruntime"
    assert rows["B"]["seconds_per_image"] > 0
    (compared,) = report["comparisons"]
    assert compared["ratios_B_over_A"]["fps"] > 0
    difference = compared["output_difference"]
    assert difference["pred_logits_max_abs_diff"] < 1e-3 and difference["panoptic_agreement"] > 0.999
