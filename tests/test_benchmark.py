"""tools/benchmark.py end to end on the thin panoptic fixture and real COCO images (tiny sizes),
plus the setting parser and the peak-memory monitor. Benchmarks, not timed tests: no assertion
on how fast anything is."""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mask2former.utils.benchmark import ModuleTimer, PeakMemory, parse_setting

REPO_ROOT = Path(__file__).resolve().parents[1]

FIXTURE = "thin_r50_coco_panoptic"


def _run_tool(tmp_path, datasets_root, *argv):
    output = tmp_path / "results.json"
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root))
    env.pop("MASK2FORMER_MSDA_IMPL", None)
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "benchmark.py"), "--device", "cpu",
         "--output", str(output), *argv],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(output.read_text()), proc.stdout


def _results(report, task):
    return {r["setting"] + r["variant"]: r["metrics"] for r in report["results"] if r["task"] == task}


def _fixture_opts(reference_dir):
    return ["MODEL.WEIGHTS", str(reference_dir / FIXTURE / "model.pkl"),
            "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "384"]


def test_params_flops_inference_compare(tmp_path, reference_dir, datasets_root):
    from mask2former import build_model, get_cfg

    config = reference_dir / FIXTURE / "config.yaml"
    report, stdout = _run_tool(
        tmp_path, datasets_root, "--config-file", str(config),
        "--task", "params", "flops", "inference",
        "--images", str(datasets_root / "coco" / "val2017" / "000000039769.jpg"),
        "--num-images", "1", "--warmup", "0",
        "--compare", "impl=pytorch", "impl=auto", *_fixture_opts(reference_dir),
    )
    cfg = get_cfg()
    cfg.merge_from_file(str(config))
    cfg.MODEL.DEVICE = "cpu"
    expected_params = sum(p.numel() for p in build_model(cfg).parameters())

    assert [s["impl"] for s in report["settings"]] == ["pytorch", "auto"]
    assert report["images"] == [str(datasets_root / "coco" / "val2017" / "000000039769.jpg")]
    assert report["environment"]["torch"] == torch.__version__
    assert len(report["environment"]["load_average_1_5_15"]) == 3

    params = _results(report, "params")
    assert params["A"]["params"] == params["B"]["params"] == expected_params

    flops = _results(report, "flops")
    assert flops["A"]["msdeformattn_impl"] == "pytorch"
    for metrics in flops.values():
        assert metrics["gflops"] > 0 and metrics["num_images"] == 1
        assert metrics["input_hw_mean"] == [256.0, 341.0]  # 480x640 at short side 256
        assert metrics["by_operator_gflops"]["conv"] > 0
    # the deformable attention sampling is counted the same way for every implementation
    assert flops["B"]["gflops"] == pytest.approx(flops["A"]["gflops"], rel=1e-9)

    inference = _results(report, "inference")
    for metrics in inference.values():
        assert metrics["fps"] > 0
        assert metrics["fps"] == pytest.approx(1 / metrics["seconds_per_image"])
        assert metrics["peak_memory_mb"] >= metrics["peak_memory_increase_mb"] >= 0
        assert metrics["memory_kind"] == "rss_sampled"
        assert 0 < metrics["msdeformattn_seconds_per_image"] < metrics["seconds_per_image"]
        share = metrics["msdeformattn_seconds_per_image"] / metrics["seconds_per_image"]
        assert metrics["max_speedup_from_msdeformattn"] == pytest.approx(1 / (1 - share))

    compared = {c["task"]: c for c in report["comparisons"]}
    assert set(compared) == {"params", "flops", "inference"}
    assert compared["params"]["ratios_B_over_A"] == {"params_m": 1.0}
    ratios = compared["inference"]["ratios_B_over_A"]
    assert ratios["fps"] == pytest.approx(inference["B"]["fps"] / inference["A"]["fps"])
    diff = compared["inference"]["output_difference"]
    # both implementations compute the same function: fp32 summation-order differences only
    assert diff["pred_logits_rel_diff"] < 1e-4 and diff["pred_masks_rel_diff"] < 1e-4
    assert 0.99 <= diff["sem_seg_argmax_agreement"] <= 1.0
    assert 0.99 <= diff["panoptic_agreement"] <= 1.0
    assert "B / A" in stdout


def test_inference_at_other_image_sizes(tmp_path, reference_dir, datasets_root):
    """Settings with their own image_size run on resized copies of the images; --image-size is
    the default for the others. Outputs of different sizes are not compared."""
    report, stdout = _run_tool(
        tmp_path, datasets_root, "--config-file", str(reference_dir / FIXTURE / "config.yaml"),
        "--task", "inference", "--images", str(datasets_root / "coco" / "val2017" / "000000039769.jpg"),
        "--num-images", "1", "--warmup", "0", "--image-size", "320", "240",
        "--compare", "default", "image_size=1280x960", *_fixture_opts(reference_dir),
    )
    inference = _results(report, "inference")
    assert inference["A"]["image_size"] == "320x240" and inference["B"]["image_size"] == "1280x960"
    assert all(m["peak_memory_mb"] > 0 for m in inference.values())
    compared = {c["task"]: c for c in report["comparisons"]}
    assert "output_difference" not in compared["inference"]
    assert "1280x960" in stdout


def test_train_synthetic_and_op(tmp_path, reference_dir, datasets_root):
    report, _ = _run_tool(
        tmp_path, datasets_root, "--config-file", str(reference_dir / FIXTURE / "config.yaml"),
        "--task", "train", "op", "--synthetic", "--batch-size", "1", "--crop", "64",
        "--warmup", "0", "--iters", "1", "--input-size", "64", "96",
        "--impls", "pytorch", "compiled", "no_such_impl", *_fixture_opts(reference_dir),
    )
    train = _results(report, "train")["A"]
    assert train["seconds_per_iter"] > 0 and train["iters"] == 1
    assert train["data"] == "synthetic" and train["crop"] == 64 and train["input_hw_mean"] == [64.0, 64.0]
    assert train["amp"] == "off" and math.isfinite(train["first_timed_loss"])
    assert train["peak_memory_mb"] > 0

    op = _results(report, "op")
    pytorch = op["Apytorch"]
    # thin head: 64 dims, 8 heads, 4 points; levels of a 64x96 image at strides 8, 16, 32
    assert pytorch["level_shapes"] == [[8, 12], [4, 6], [2, 3]]
    assert (pytorch["heads"], pytorch["channels"], pytorch["points"], pytorch["batch"]) == (8, 8, 4, 1)
    assert pytorch["forward_ms"] > 0 and pytorch["forward_backward_ms"] > 0
    assert "no_such_impl" in op["Ano_such_impl"]["skipped"]
    compiled = op["Acompiled"]
    if "skipped" not in compiled:
        assert compiled["impl"] == "compiled"
        differences = compiled["difference_vs_pytorch"]
        assert set(differences) == {f"{name}_{kind}" for kind in ("max_abs_diff", "rel_diff") for name in (
            "output", "grad_value", "grad_sampling_locations", "grad_attention_weights")}
        assert max(v for k, v in differences.items() if k.endswith("rel_diff")) < 1e-4


def test_train_real_data(tmp_path, reference_dir, datasets_root):
    # COCO val panoptic is the training set here: the shared sample has no panoptic train labels
    report, _ = _run_tool(
        tmp_path, datasets_root, "--config-file", str(reference_dir / FIXTURE / "config.yaml"),
        "--task", "train", "--batch-size", "1", "--crop", "96", "--warmup", "0", "--iters", "1",
        *_fixture_opts(reference_dir),
        "DATASETS.TRAIN", '("coco_2017_val_panoptic",)', "INPUT.DATASET_MAPPER_NAME", "coco_panoptic_lsj",
    )
    train = _results(report, "train")["A"]
    assert train["data"] == "coco_2017_val_panoptic"
    assert train["input_hw_mean"] == [96.0, 96.0] and train["batch_size"] == 1
    assert train["seconds_per_iter"] > 0 and math.isfinite(train["first_timed_loss"])


def test_parse_setting():
    setting = parse_setting("impl=pytorch, dtype=bf16,threads=1,INPUT.CROP.SIZE=(512, 512)", "A")
    assert (setting.impl, setting.dtype, setting.threads) == ("pytorch", "bf16", 1)
    assert setting.overrides == ("INPUT.CROP.SIZE", "(512, 512)")
    assert parse_setting("default", "B").overrides == ()
    assert parse_setting("image_size=4000x3000", "B").image_size == (4000, 3000)
    for bad in ("impl", "colour=red", "dtype=fp8", "threads=0", "image_size=4000", "image_size=0x3"):
        with pytest.raises(ValueError, match="Setting"):
            parse_setting(bad, "A")


def test_peak_memory_sees_cpu_allocation():
    with PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        time.sleep(0.1)  # several sampling intervals
        del block
    assert memory.kind == "rss_sampled"
    assert memory.increase_mb >= 48
    assert memory.peak_mb >= memory.start_mb + memory.increase_mb - 1e-6


def test_module_timer_counts_time_inside_the_modules_only():
    class Sleep(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.05)
            return x

    model = torch.nn.Sequential(Sleep(), torch.nn.Linear(2, 2), Sleep())
    with ModuleTimer(model, Sleep, torch.device("cpu")) as timer:
        start = time.perf_counter()
        model(torch.zeros(1, 2))
        time.sleep(0.05)
        total = time.perf_counter() - start
    assert timer.calls == 2
    assert 0.1 <= timer.seconds < total - 0.04
    model(torch.zeros(1, 2))  # hooks removed on exit
    assert timer.calls == 2
