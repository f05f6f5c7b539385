"""TEST.PRECISION: low-precision inference of the whole network, on the thin parity fixtures
(../shared/reference) and real COCO images, through every entry point; and the deformable-attention
op taking 16-bit values with float32 sampling locations."""
import json
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import mask2former.layers.ms_deform_attn_module as msda_module
from mask2former import Predictor
from mask2former.config import get_cfg
from mask2former.layers.ms_deform_attn_compiled import EXTENSION_AVAILABLE
from mask2former.layers.ms_deform_attn_op import ms_deform_attn
from mask2former.layers.norm import FrozenBatchNorm2d
from mask2former.modeling.build import build_model
from mask2former.modeling.precision import PRECISIONS, precision_dtype, prepare_for_inference

REPO_ROOT = Path(__file__).resolve().parents[1]
LOW = ["bfloat16", "float16"]
FIXTURES = ["thin_r50_coco_panoptic", "thin_swin_coco_instance", "thin_r50_ade20k_semantic"]
# Relative L2 error of the head outputs (pred_masks, pred_logits) against float32, per image:
# bfloat16 (8-bit mantissa) measured 0.6-2.7%, float16 (11-bit) 0.09-0.4%. A wrong cast (e.g.
# 16-bit sampling locations, off by a pixel on the finest level) gives several times more.
MAX_HEAD_ERROR = {"bfloat16": 0.05, "float16": 0.008}
# Agreement of the post-processed maps with float32 over the fixture's 3 images (pixel-weighted).
# The thin fixtures are random networks with a scaled-up class head, so many pixels are near-ties
# and whole segments cross the 0.8 score threshold: with the same head error, bfloat16 measured
# 88-100% per image (it moves with the thread count), float16 >= 99.3%.
MIN_AGREEMENT = {"bfloat16": 0.9, "float16": 0.99}


def _fixture_cfg(reference_dir, fixture, precision="float32"):
    cfg = get_cfg()
    cfg.merge_from_file(str(reference_dir / fixture / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = str(reference_dir / fixture / "model.pkl")
    cfg.TEST.PRECISION = precision
    return cfg


def _fixture_model(reference_dir, fixture):
    model = build_model(_fixture_cfg(reference_dir, fixture)).eval()
    with open(reference_dir / fixture / "model.pkl", "rb") as f:
        weights = pickle.load(f)["model"]
    state = OrderedDict((k, torch.from_numpy(np.asarray(v))) for k, v in weights.items())
    state._metadata = weights._metadata
    model.load_state_dict(state, strict=True)
    return model


class DtypeRecorder:
    """Forward hooks on every Conv2d / Linear / MultiheadAttention recording (input, weight, output
    dtypes), and spies on
    the deformable-attention op recording (value, sampling_locations, attention_weights) dtypes, and
    on its fused inference kernel recording (value, sampling_offsets, attention_logits) dtypes."""

    def __init__(self, model: nn.Module, monkeypatch):
        self.layers, self.op_calls = set(), set()
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.MultiheadAttention)):
                m.register_forward_hook(self._layer)

        def spy(value, shapes, starts, locations, weights, **kwargs):
            self.op_calls.add((value.dtype, locations.dtype, weights.dtype))
            return ms_deform_attn(value, shapes, starts, locations, weights, **kwargs)

        def fused_spy(value, shapes, starts, reference, offsets, logits):
            self.op_calls.add((value.dtype, offsets.dtype, logits.dtype))
            return fused(value, shapes, starts, reference, offsets, logits)

        fused = msda_module.ms_deform_attn_fused_inference
        monkeypatch.setattr(msda_module, "ms_deform_attn", spy)
        monkeypatch.setattr(msda_module, "ms_deform_attn_fused_inference", fused_spy)

    def _layer(self, module, args, output):
        if isinstance(module, nn.MultiheadAttention):
            self.layers.add((args[0].dtype, module.in_proj_weight.dtype, output[0].dtype))
        else:
            self.layers.add((args[0].dtype, module.weight.dtype, output.dtype))


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).double().mean())


def _category_map(panoptic) -> torch.Tensor:
    seg, info = panoptic
    categories = torch.full(seg.shape, -1, dtype=torch.long)
    for segment in info:
        categories[seg == segment["id"]] = segment["category_id"]
    return categories


def test_bad_precision_names_the_key_and_the_allowed_values(reference_dir):
    assert precision_dtype("bfloat16") is torch.bfloat16 and get_cfg().TEST.PRECISION == "float32"
    with pytest.raises(ValueError, match=r"TEST\.PRECISION='fp16'; expected one of \['float32', 'bfloat16', 'float16'\]"):
        precision_dtype("fp16")
    with pytest.raises(ValueError, match=r"TEST\.PRECISION='half'"):
        Predictor(_fixture_cfg(reference_dir, FIXTURES[0], "half"))


def test_values_beyond_float16_range_name_the_parameter_and_nothing_is_cast(reference_dir):
    model = _fixture_model(reference_dir, FIXTURES[0])
    with torch.no_grad():
        model.sem_seg_head.predictor.class_embed.weight[0, 0] = 1e6
    with pytest.raises(ValueError, match=r"float16: parameter sem_seg_head\.predictor\.class_embed\.weight .*65504"):
        prepare_for_inference(model, "float16")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    prepare_for_inference(_fixture_model(reference_dir, FIXTURES[0]), "bfloat16")  # bfloat16 has the range


@pytest.mark.parametrize("precision", LOW)
@pytest.mark.parametrize("fixture", FIXTURES)
def test_network_runs_in_low_precision_and_agrees_with_float32(reference_dir, fixture, precision, monkeypatch):
    reference = _fixture_model(reference_dir, fixture)
    model = prepare_for_inference(_fixture_model(reference_dir, fixture), precision)
    dtype = PRECISIONS[precision]
    # the frozen batch norms are folded into their convolutions; float32 stays: the input
    # normalisation, nothing else
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in model.modules())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point():
            assert t.dtype == (torch.float32 if name in ("pixel_mean", "pixel_std") else dtype), name
    inputs = []
    for path in sorted((reference_dir / fixture).glob("*.npz")):
        npz = np.load(path)
        inputs.append([{"image": torch.from_numpy(npz["image"]), "height": int(npz["height"]),
                        "width": int(npz["width"])}])
    heads = {"reference": [], "model": []}
    for name, m in (("reference", reference), ("model", model)):
        m.sem_seg_head.register_forward_hook(lambda mod, args, out, name=name: heads[name].append(out))
    with torch.no_grad():
        references = [reference(x)[0] for x in inputs]
        recorder = DtypeRecorder(model, monkeypatch)
        results = [model(x)[0] for x in inputs]
    for expected, actual in zip(heads["reference"], heads["model"]):
        for key in ("pred_masks", "pred_logits"):
            error = (actual[key].float() - expected[key]).norm() / expected[key].norm()
            assert error < MAX_HEAD_ERROR[precision], (key, float(error))
    agree = {"sem_seg": [], "panoptic_seg": []}
    for expected, actual in zip(references, results):
        assert set(actual) == set(expected)
        if "sem_seg" in actual:
            assert actual["sem_seg"].dtype == torch.float32
            agree["sem_seg"].append(_agreement(actual["sem_seg"].argmax(0), expected["sem_seg"].argmax(0)))
        if "panoptic_seg" in actual:
            agree["panoptic_seg"].append(
                _agreement(_category_map(actual["panoptic_seg"]), _category_map(expected["panoptic_seg"]))
            )
        if "instances" in actual:
            scores = actual["instances"].scores
            assert scores.dtype == torch.float32 and len(scores) > 0
            # the same leading scores (sorted, so whatever the order of near-equal ones), within the
            # low-precision error of the class head (class probabilities move by up to ~0.05)
            top = min(10, len(scores), len(expected["instances"]))
            diff = scores.sort(descending=True).values[:top] - expected["instances"].scores.sort(descending=True).values[:top]
            assert float(diff.abs().max()) < 0.1, diff
    # every convolution and linear layer ran with low-precision inputs and weights
    assert recorder.layers == {(dtype, dtype, dtype)}
    # the op got 16-bit values with float32 locations and weights
    assert recorder.op_calls == {(dtype, torch.float32, torch.float32)}
    for task, values in agree.items():
        if values:
            assert np.mean(values) >= MIN_AGREEMENT[precision], (task, values)


def _op_inputs(dtype, size=152, seed=0):
    """One 152 x 152 level and a 19 x 19 one, 8 heads of 32 channels, locations everywhere."""
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[size, size], [19, 19]])
    starts = torch.tensor([0, size * size])
    value = torch.randn(1, size * size + 361, 8, 32, generator=gen).to(dtype)
    locations = torch.rand(1, 64, 8, 2, 4, 2, generator=gen)
    weights = torch.rand(1, 64, 8, 2, 4, generator=gen).softmax(-1)
    return value, shapes, starts, locations, weights


@pytest.mark.parametrize("impl", ["pytorch", "compiled"])
@pytest.mark.parametrize("precision", LOW)
def test_op_takes_16bit_value_with_float32_locations(precision, impl):
    if impl == "compiled" and not EXTENSION_AVAILABLE:
        pytest.skip("mask2former._C is not built")
    dtype = PRECISIONS[precision]
    value, shapes, starts, locations, weights = _op_inputs(dtype)
    # reference: float32 on the same (rounded) value
    expected = ms_deform_attn(value.float(), shapes, starts, locations, weights, impl="pytorch")
    bound = 2 * torch.finfo(dtype).eps * float(expected.abs().max())
    for w in (weights, weights.to(dtype)):
        w_ref = w.float()
        ref = ms_deform_attn(value.float(), shapes, starts, locations, w_ref, impl="pytorch")
        out = ms_deform_attn(value, shapes, starts, locations, w, impl=impl)
        assert out.dtype == dtype
        assert float((out.float() - ref).abs().max()) <= bound
    # 16-bit locations are what the float32 ones avoid: off by up to ~0.6 pixel on the 152 level
    coarse = ms_deform_attn(value, shapes, starts, locations.to(dtype).float(), weights, impl=impl)
    fine = ms_deform_attn(value, shapes, starts, locations, weights, impl=impl)
    assert (coarse.float() - expected).abs().mean() > 4 * (fine.float() - expected).abs().mean()
    with pytest.raises(ValueError, match="sampling_locations must have value's dtype"):
        ms_deform_attn(value.double(), shapes, starts, locations, weights, impl=impl)


def test_compiled_op_gradients_in_the_dtype_of_each_input():
    if not EXTENSION_AVAILABLE:
        pytest.skip("mask2former._C is not built")
    value, shapes, starts, locations, weights = _op_inputs(torch.bfloat16, size=12)
    value.requires_grad_(), locations.requires_grad_()
    weights = weights.to(torch.bfloat16).requires_grad_()
    ms_deform_attn(value, shapes, starts, locations, weights, impl="compiled").float().square().sum().backward()
    reference = [t.detach().float().requires_grad_() for t in (value, locations, weights)]
    ms_deform_attn(reference[0], shapes, starts, *reference[1:], impl="pytorch").square().sum().backward()
    for t, r in zip((value, locations, weights), reference):
        assert t.grad.dtype == t.dtype
        # bf16 forward output and grad rounding: a few bf16 units of the largest gradient
        assert float((t.grad.float() - r.grad).abs().max()) <= 0.05 * float(r.grad.abs().max())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", LOW)
def test_cuda_op_takes_16bit_value_with_float32_locations(precision):
    if not EXTENSION_AVAILABLE:
        pytest.skip("mask2former._C is not built")
    dtype = PRECISIONS[precision]
    value, shapes, starts, locations, weights = (t.cuda() for t in _op_inputs(dtype))
    expected = ms_deform_attn(value.float(), shapes, starts, locations, weights, impl="pytorch")
    out = ms_deform_attn(value, shapes, starts, locations, weights, impl="compiled")
    assert out.dtype == dtype
    assert float((out.float() - expected).abs().max()) <= 2 * torch.finfo(dtype).eps * float(expected.abs().max())


# ------------------------------------------------------------------------- entry points


@pytest.fixture(scope="module")
def coco_image(datasets_root):
    return cv2.imread(str(datasets_root / "coco" / "val2017" / "000000039769.jpg"))


def _small(cfg):
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 256, 384
    return cfg


def test_predictor_honours_precision(reference_dir, coco_image, monkeypatch):
    fp32 = Predictor(_small(_fixture_cfg(reference_dir, FIXTURES[0])))
    predictor = Predictor(_small(_fixture_cfg(reference_dir, FIXTURES[0], "bfloat16")))
    assert predictor.model.sem_seg_head.predictor.class_embed.weight.dtype == torch.bfloat16
    expected = fp32(coco_image)
    recorder = DtypeRecorder(predictor.model, monkeypatch)
    actual = predictor(coco_image)
    assert recorder.layers == {(torch.bfloat16,) * 3}
    assert actual["sem_seg"].dtype == torch.float32
    agreement = _agreement(_category_map(actual["panoptic_seg"]), _category_map(expected["panoptic_seg"]))
    assert agreement >= MIN_AGREEMENT["bfloat16"]


def test_train_net_eval_only_honours_precision(reference_dir, dataset_root, tmp_path, monkeypatch):
    """``train_net.py --eval-only`` evaluates the cast model on the real COCO panoptic samples."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    import train_net

    seen = {}
    evaluate = train_net.evaluate_model

    def recording_evaluate(cfg, model, tag=""):
        seen["dtype"] = model.sem_seg_head.predictor.class_embed.weight.dtype
        seen["training"] = model.training
        return evaluate(cfg, model, tag)

    monkeypatch.setattr(train_net, "evaluate_model", recording_evaluate)
    config = reference_dir / FIXTURES[0] / "config.yaml"
    args = train_net.argument_parser().parse_args([
        "--config-file", str(config), "--eval-only",
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(reference_dir / FIXTURES[0] / "model.pkl"),
        "OUTPUT_DIR", str(tmp_path), "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "384",
        "DATALOADER.NUM_WORKERS", "0", "TEST.PRECISION", "bfloat16",
    ])
    results = train_net.main(args)
    assert seen == {"dtype": torch.bfloat16, "training": False}
    assert 0 <= results["panoptic_seg"]["PQ"] <= 100


def test_demo_honours_precision(reference_dir, datasets_root, tmp_path):
    fixture = reference_dir / FIXTURES[0]
    image = datasets_root / "coco" / "val2017" / "000000039769.jpg"
    outputs = {}
    for precision in ("float32", "bfloat16"):
        out_dir = tmp_path / precision
        command = [
            sys.executable, str(REPO_ROOT / "demo" / "demo.py"), "--config-file", str(fixture / "config.yaml"),
            "--input", str(image), "--output", str(out_dir), "--opts", "MODEL.DEVICE", "cpu",
            "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "384", "MODEL.WEIGHTS", str(fixture / "model.pkl"),
            "TEST.PRECISION", precision,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr
        outputs[precision] = cv2.imread(str(out_dir / image.with_suffix(".png").name)).astype(int)
    # bfloat16 ran (the overlay is not the float32 one) and drew nearly the same segments (borders
    # and labels move with them)
    same = (np.abs(outputs["float32"] - outputs["bfloat16"]).max(axis=2) <= 1).mean()
    assert 0.8 <= same < 1.0
    command[-1] = "double"
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode != 0 and "TEST.PRECISION='double'" in result.stderr


def test_benchmark_inference_honours_precision(reference_dir, datasets_root, tmp_path):
    output = tmp_path / "results.json"
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root))
    fixture = reference_dir / FIXTURES[0]
    command = [
        sys.executable, str(REPO_ROOT / "tools" / "benchmark.py"), "--device", "cpu", "--output", str(output),
        "--config-file", str(fixture / "config.yaml"), "--task", "inference",
        "--images", str(datasets_root / "coco" / "val2017" / "000000039769.jpg"), "--num-images", "1",
        "--warmup", "0", "--compare", "default", "TEST.PRECISION=bfloat16",
        "MODEL.WEIGHTS", str(fixture / "model.pkl"), "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "384",
    ]
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(output.read_text())
    rows = {r["setting"]: r["metrics"] for r in report["results"]}
    assert (rows["A"]["precision"], rows["A"]["dtype"]) == ("float32", "fp32")
    assert (rows["B"]["precision"], rows["B"]["dtype"]) == ("bfloat16", "bf16")
    diff = next(c for c in report["comparisons"] if c["task"] == "inference")["output_difference"]
    # B really ran in bfloat16 (float32 vs float32 differs by summation order only, < 1e-4) ...
    assert diff["pred_logits_rel_diff"] > 1e-3
    # ... and its post-processed outputs agree with float32
    assert diff["panoptic_agreement"] >= MIN_AGREEMENT["bfloat16"]


def test_video_predictor_honours_precision(reference_dir, coco_image, monkeypatch):
    from mask2former.video.predictor import VideoPredictor

    root = reference_dir / "thin_r50_ytvis2019_video"
    cfg = get_cfg()
    cfg.merge_from_file(str(root / "config.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(root / "model.pkl"), "INPUT.MIN_SIZE_TEST", 160])
    frames = [np.ascontiguousarray(coco_image[60:420, 8 * t: 8 * t + 480]) for t in range(3)]
    expected = VideoPredictor(cfg)(frames)
    cfg.TEST.PRECISION = "bfloat16"
    predictor = VideoPredictor(cfg)
    recorder = DtypeRecorder(predictor.model, monkeypatch)
    actual = predictor(frames)
    assert recorder.layers == {(torch.bfloat16,) * 3}
    assert recorder.op_calls == {(torch.bfloat16, torch.float32, torch.float32)}
    top = min(10, len(expected["pred_scores"]))
    diff = np.abs(np.sort(actual["pred_scores"])[::-1][:top] - np.sort(expected["pred_scores"])[::-1][:top])
    assert top > 0 and diff.max() < 0.1, diff


def test_benchmark_dtype_setting_maps_to_precision_for_inference_only(reference_dir):
    import importlib.util

    from mask2former.utils.benchmark import parse_setting

    spec = importlib.util.spec_from_file_location("benchmark_tool", REPO_ROOT / "tools" / "benchmark.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    config = str(reference_dir / FIXTURES[0] / "config.yaml")
    args = tool.build_parser().parse_args(["--config-file", config, "--task", "inference", "--device", "cpu"])
    for setting, precision in (("default", "float32"), ("dtype=bf16", "bfloat16"), ("dtype=fp16", "float16")):
        assert tool.build_cfg(args, parse_setting(setting, "A"), "inference").TEST.PRECISION == precision
    train = tool.build_cfg(args, parse_setting("dtype=bf16", "A"), "train")
    assert train.TEST.PRECISION == "float32" and train.SOLVER.AMP.ENABLED and train.SOLVER.AMP.PRECISION == "bfloat16"
