"""Detectron2 plugin path: with Detectron2 installed, ``import mask2former`` plugs the model, configs,
datasets, mappers and evaluators into Detectron2, and ``train_net.py --engine detectron2`` trains
with Detectron2's ``DefaultTrainer``.

The standalone side of the comparisons runs in a fresh interpreter in which ``import detectron2``
fails (``sys.modules["detectron2"] = None``), so it uses this package's own registries, ResNet,
structures and catalogs exactly as an installation without Detectron2 does.
"""
import copy
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

detectron2 = pytest.importorskip(
    "detectron2", reason="Detectron2 is optional; the plugin-path tests need it installed"
)

import mask2former  # noqa: E402,F401  (registers into Detectron2's registries)
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg as d2_get_cfg  # noqa: E402
from detectron2.data import (  # noqa: E402
    DatasetCatalog,
    MetadataCatalog,
    build_detection_train_loader,
)
from detectron2.evaluation import COCOEvaluator as D2COCOEvaluator  # noqa: E402
from detectron2.evaluation import COCOPanopticEvaluator as D2COCOPanopticEvaluator  # noqa: E402
from detectron2.evaluation import SemSegEvaluator as D2SemSegEvaluator  # noqa: E402
from detectron2.modeling import (  # noqa: E402
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    SEM_SEG_HEADS_REGISTRY,
)
from detectron2.modeling import build_model as d2_build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from mask2former.config import add_maskformer2_config, add_maskformer2_video_config  # noqa: E402
from mask2former.config import get_cfg as standalone_get_cfg  # noqa: E402
from mask2former.data.dataset_mappers import build_dataset_mapper  # noqa: E402
from mask2former.data.datasets import get_builtin_metadata  # noqa: E402
from mask2former.data.datasets.coco_panoptic import register_coco_panoptic_annos_sem_seg  # noqa: E402
from mask2former.engine import d2_trainer  # noqa: E402
from mask2former.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator  # noqa: E402
from mask2former.modeling.meta_arch import MaskFormer, MaskFormerHead  # noqa: E402
from mask2former.utils.registry import PIXEL_DECODER_REGISTRY, TRANSFORMER_DECODER_REGISTRY  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = ["thin_r50_coco_panoptic", "thin_swin_coco_instance", "thin_r50_ade20k_semantic"]
CONFIGS = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml"))
BLOCK_DETECTRON2 = "sys.modules['detectron2'] = None\n"
TIE_EPS = 1e-5


def _run_python(code: str, *args: str, block_detectron2: bool = False, env=None, timeout: int = 600):
    """Run ``code`` in a fresh interpreter (``sys.argv[1:] == args``), from the repository root."""
    prefix = "import sys\n" + (BLOCK_DETECTRON2 if block_detectron2 else "")
    proc = subprocess.run(
        [sys.executable, "-c", prefix + code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return proc


def _d2_cfg(deeplab: bool = True):
    """Detectron2's config with the DeepLab keys (from Detectron2's project when ``deeplab`` and it
    is importable, else from add_maskformer2_config) and the Mask2Former keys."""
    cfg = d2_get_cfg()
    if deeplab:
        try:
            from detectron2.projects.deeplab import add_deeplab_config
        except ImportError:
            pass
        else:
            add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    add_maskformer2_video_config(cfg)
    return cfg


def _as_lists(value):
    """Nested tuples as lists (yacs turns only the outer level of a YAML list into a tuple)."""
    return [_as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def _flatten(node, prefix=""):
    """``{"MODEL.WEIGHTS": value, ...}`` of a config, sequences as nested lists."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = _as_lists(value)
    return out


def _fixture_cfg(reference_dir, fixture):
    cfg = _d2_cfg()
    cfg.merge_from_file(str(reference_dir / fixture / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _assert_close(name, actual, expected):
    """The fixtures' tolerance: 1e-4 absolute, 1e-3 relative above 1."""
    expected = torch.as_tensor(expected)
    diff = (actual - expected).abs()
    bound = torch.maximum(torch.full_like(expected, 1e-4), 1e-3 * expected.abs())
    assert bool((diff <= bound).all()), f"{name}: max abs diff {diff.max().item():.3g}"


# ------------------------------------------------------------------------------- registration


def test_import_registers_components_in_detectron2_registries():
    from detectron2.modeling.backbone.resnet import build_resnet_backbone as d2_resnet

    from mask2former.modeling.backbone import D2SwinTransformer
    from mask2former.utils import registry

    assert registry.DETECTRON2_AVAILABLE
    assert registry.META_ARCH_REGISTRY is META_ARCH_REGISTRY
    assert registry.SEM_SEG_HEADS_REGISTRY is SEM_SEG_HEADS_REGISTRY
    assert registry.BACKBONE_REGISTRY is BACKBONE_REGISTRY
    assert META_ARCH_REGISTRY.get("MaskFormer") is MaskFormer
    assert SEM_SEG_HEADS_REGISTRY.get("MaskFormerHead") is MaskFormerHead
    assert BACKBONE_REGISTRY.get("D2SwinTransformer") is D2SwinTransformer
    # Detectron2's own ResNet builder is kept (same parameter names).
    assert BACKBONE_REGISTRY.get("build_resnet_backbone") is d2_resnet
    assert {"MSDeformAttnPixelDecoder", "BasePixelDecoder"} <= {k for k, _ in PIXEL_DECODER_REGISTRY}
    assert "MultiScaleMaskedTransformerDecoder" in {k for k, _ in TRANSFORMER_DECODER_REGISTRY}
    # The video model (mask2former.video) too, and the YouTube-VIS names in Detectron2's catalog.
    from mask2former.video import VideoMaskFormer, VideoMultiScaleMaskedTransformerDecoder

    assert META_ARCH_REGISTRY.get("VideoMaskFormer") is VideoMaskFormer
    assert TRANSFORMER_DECODER_REGISTRY.get("VideoMultiScaleMaskedTransformerDecoder") is (
        VideoMultiScaleMaskedTransformerDecoder
    )
    assert {"ytvis_2019_train", "ytvis_2021_val"} <= set(DatasetCatalog.list())


def test_detectron2_projects_import_after_mask2former():
    """Detectron2's DeepLab project registers ``build_resnet_deeplab_backbone`` itself: importing it
    after mask2former must not collide (and the original train_net's imports keep working)."""
    proc = _run_python(
        "import mask2former\n"
        "try:\n"
        "    import detectron2.projects.deeplab as deeplab\n"
        "except ImportError:\n"
        "    print('no-deeplab-project')\n"
        "    raise SystemExit(0)\n"
        "from detectron2.modeling import BACKBONE_REGISTRY\n"
        "print(BACKBONE_REGISTRY.get('build_resnet_deeplab_backbone').__module__)\n"
    )
    assert proc.stdout.strip() in ("no-deeplab-project", "detectron2.projects.deeplab.resnet")


# ------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_loads_into_detectron2_config(config):
    path = str(REPO / "configs" / config)
    expected = standalone_get_cfg()
    expected.merge_from_file(path)
    for deeplab in (True, False):
        cfg = _d2_cfg(deeplab=deeplab)
        cfg.merge_from_file(path)
        assert _flatten(cfg) == _flatten(expected), (config, deeplab)


def test_config_dumped_by_standalone_loads_into_detectron2_config(tmp_path):
    cfg = standalone_get_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "ade20k" / "semantic" / "swin_L.yaml"))
    cfg.SOLVER.AMP.PRECISION = "bfloat16"
    (tmp_path / "dumped.yaml").write_text(cfg.dump())
    d2cfg = _d2_cfg()
    d2cfg.merge_from_file(str(tmp_path / "dumped.yaml"))
    assert _flatten(d2cfg) == _flatten(cfg)


# ------------------------------------------------------------------------------------- models


def test_published_configs_build_published_keys_with_detectron2(reference_dir):
    manifests = sorted(p for p in (reference_dir / "keys").glob("*.json") if not p.stem.startswith("ytvis"))
    assert len(manifests) == 12
    for path in manifests:
        manifest = json.loads(path.read_text())
        dataset, task, backbone = path.stem.split("_", 2)
        cfg = _d2_cfg()
        cfg.merge_from_file(str(REPO / "configs" / dataset / task / f"{backbone}.yaml"))
        cfg.MODEL.DEVICE = "meta"
        with torch.device("meta"):
            model = d2_build_model(cfg)
        assert isinstance(model, MaskFormer)
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == manifest["state_dict"], path.name



def test_video_configs_build_published_keys_with_detectron2(reference_dir):
    from mask2former.video import VideoMaskFormer

    manifests = sorted((reference_dir / "keys").glob("ytvis*.json"))
    assert len(manifests) == 8
    for path in manifests:
        year, backbone = path.stem[len("ytvis"):].split("_", 1)
        cfg = _d2_cfg()
        cfg.merge_from_file(str(REPO / "configs" / f"youtubevis_{year}" / f"{backbone}.yaml"))
        cfg.MODEL.DEVICE = "meta"
        with torch.device("meta"):
            model = d2_build_model(cfg)
        assert isinstance(model, VideoMaskFormer)
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert shapes == json.loads(path.read_text())["state_dict"], path.name

_STANDALONE_MODEL = """
import json
import numpy as np
import torch
from mask2former.checkpoint import Checkpointer
from mask2former.config import get_cfg
from mask2former.modeling.build import build_model
from mask2former.utils.registry import DETECTRON2_AVAILABLE

assert not DETECTRON2_AVAILABLE
config, weights, image_npz, out = sys.argv[1:5]
cfg = get_cfg()
cfg.merge_from_file(config)
cfg.MODEL.DEVICE = "cpu"
model = build_model(cfg).eval()
assert type(model.backbone).__module__.startswith("mask2former."), type(model.backbone)
Checkpointer(model).load(weights, strict=True)
raw = {}
model.sem_seg_head.register_forward_hook(lambda module, args, output: raw.update(output))
npz = np.load(image_npz)
inputs = [{"image": torch.from_numpy(npz["image"]), "height": int(npz["height"]), "width": int(npz["width"])}]
with torch.no_grad():
    result = model(inputs)[0]
arrays = {"pred_logits": raw["pred_logits"][0], "pred_masks": raw["pred_masks"][0]}
if "sem_seg" in result:
    arrays["sem_seg"] = result["sem_seg"]
np.savez(out + ".npz", **{k: v.numpy() for k, v in arrays.items()})
state = {k: [list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()}
with open(out + ".json", "w") as f:
    json.dump({"state": state, "backbone": type(model.backbone).__name__}, f)
"""


@pytest.mark.parametrize("fixture", FIXTURES)
def test_detectron2_build_model_equals_standalone(reference_dir, tmp_path, fixture):
    """Same state-dict layout, and for the same weights (saved by Detectron2's checkpointer, loaded
    by the standalone one) the same outputs; the checkpoint is interchangeable."""
    root = reference_dir / fixture
    cfg = _fixture_cfg(reference_dir, fixture)
    torch.manual_seed(0)
    model = d2_build_model(cfg).eval()
    assert isinstance(model, MaskFormer)
    if cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone":
        assert type(model.backbone).__module__ == "detectron2.modeling.backbone.resnet"
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("d2_random_init")

    image_npz = sorted(root.glob("*.npz"))[0]
    out = tmp_path / "standalone"
    _run_python(
        _STANDALONE_MODEL,
        str(root / "config.yaml"),
        str(tmp_path / "d2_random_init.pth"),
        str(image_npz),
        str(out),
        block_detectron2=True,
    )
    standalone = json.loads((out.with_suffix(".json")).read_text())
    state = {k: [list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()}
    assert list(state) == list(standalone["state"])
    assert state == standalone["state"]

    raw = {}
    model.sem_seg_head.predictor.return_aux_outputs = True
    model.sem_seg_head.register_forward_hook(lambda module, args, output: raw.update(output))
    npz = np.load(image_npz)
    inputs = [{"image": torch.from_numpy(npz["image"]), "height": int(npz["height"]), "width": int(npz["width"])}]
    with torch.no_grad():
        result = model(inputs)[0]
    expected = np.load(out.with_suffix(".npz"))
    for key in ("pred_logits", "pred_masks"):
        np.testing.assert_allclose(raw[key][0].numpy(), expected[key], rtol=1e-5, atol=1e-5, err_msg=key)
    if "sem_seg" in result:
        np.testing.assert_allclose(result["sem_seg"].numpy(), expected["sem_seg"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_detectron2_model_reproduces_reference_outputs(reference_dir, fixture):
    """Detectron2's build_model + DetectionCheckpointer on the model-zoo-format fixture weights give
    the original implementation's outputs (first fixture image)."""
    root = reference_dir / fixture
    cfg = _fixture_cfg(reference_dir, fixture)
    model = d2_build_model(cfg).eval()
    DetectionCheckpointer(model).load(str(root / "model.pkl"))
    with open(root / "model.pkl", "rb") as f:
        weights = pickle.load(f)["model"]
    state = model.state_dict()
    assert set(state) == set(weights)  # nothing missing, nothing unexpected
    for key, value in weights.items():
        assert torch.equal(state[key], torch.as_tensor(np.asarray(value))), key

    raw = {}
    model.sem_seg_head.register_forward_hook(lambda module, args, output: raw.update(output))
    npz = np.load(sorted(root.glob("*.npz"))[0])
    height, width = int(npz["height"]), int(npz["width"])
    with torch.no_grad():
        result = model([{"image": torch.from_numpy(npz["image"]), "height": height, "width": width}])[0]
    _assert_close("pred_logits", raw["pred_logits"][0], npz["pred_logits"])
    _assert_close("pred_masks", raw["pred_masks"][0], npz["pred_masks"])
    for i, aux in enumerate(raw["aux_outputs"]):
        _assert_close(f"aux{i}_pred_logits", aux["pred_logits"][0], npz[f"aux{i}_pred_logits"])
        _assert_close(f"aux{i}_pred_masks", aux["pred_masks"][0], npz[f"aux{i}_pred_masks"])
    if model.semantic_on:
        sem_seg = result["sem_seg"]
        top2 = sem_seg.topk(2, dim=0).values
        differ = sem_seg.argmax(0).numpy() != npz["sem_seg_argmax"]
        assert not (differ & ((top2[0] - top2[1]).numpy() > TIE_EPS)).any()
        np.testing.assert_allclose(sem_seg.max(0).values.numpy(), npz["sem_seg_max"], atol=1e-4, rtol=1e-3)
    if model.panoptic_on:
        _, segments_info = result["panoptic_seg"]
        assert segments_info == json.loads(npz["panoptic_segments_info"].tobytes().decode("utf-8"))
    if model.instance_on:
        instances = result["instances"]
        assert isinstance(instances, Instances)
        np.testing.assert_array_equal(instances.pred_classes.numpy(), npz["instances_pred_classes"])
        np.testing.assert_allclose(instances.scores.numpy(), npz["instances_scores"], atol=1e-4, rtol=1e-3)


# -------------------------------------------------------------------------- datasets, mappers


@pytest.fixture(scope="module")
def prepared_root(datasets_root, tmp_path_factory):
    """A dataset root: the shared COCO samples (symlinked) plus the semantic label maps made from
    the panoptic annotations by the repository's preparation script."""
    root = tmp_path_factory.mktemp("d2_datasets")
    _run_python(
        "import runpy\n"
        "sys.argv = ['prepare', *sys.argv[1:]]\n"
        "runpy.run_path('datasets/prepare_coco_semantic_annos_from_panoptic_annos.py', run_name='__main__')\n",
        "--dataset-root", str(datasets_root), "--output-root", str(root),
        "--splits", "val2017", "--workers", "0",
    )
    assert len(list((root / "coco" / "panoptic_semseg_val2017").glob("*.png"))) == 3
    return root


@pytest.fixture()
def test_datasets(prepared_root):
    """Two datasets registered for this test: COCO val instances (with Detectron2's own
    registration function) and COCO val panoptic with semantic maps (with mask2former's)."""
    from detectron2.data.datasets import register_coco_instances as d2_register_coco_instances

    coco = prepared_root / "coco"
    names = {"instances": "d2plugin_test_coco_val", "panoptic": "d2plugin_test_coco_val_panoptic_with_sem_seg"}
    d2_register_coco_instances(
        names["instances"],
        get_builtin_metadata("coco"),
        str(coco / "annotations" / "instances_val2017.json"),
        str(coco / "val2017"),
    )
    register_coco_panoptic_annos_sem_seg(
        names["panoptic"],
        get_builtin_metadata("coco_panoptic"),
        str(coco / "val2017"),
        str(coco / "panoptic_val2017"),
        str(coco / "annotations" / "panoptic_val2017.json"),
        str(coco / "panoptic_semseg_val2017"),
        str(coco / "annotations" / "instances_val2017.json"),
    )
    yield names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.mark.parametrize(
    "mapper, dataset",
    [
        ("mask_former_semantic", "panoptic"),
        ("mask_former_panoptic", "panoptic"),
        ("coco_panoptic_lsj", "panoptic"),
        ("mask_former_instance", "instances"),
        ("coco_instance_lsj", "instances"),
    ],
)
def test_mappers_with_detectron2_train_loader(reference_dir, test_datasets, mapper, dataset):
    cfg = _d2_cfg()
    cfg.merge_from_file(str(REPO / "configs" / "coco" / "panoptic" / "R50.yaml"))
    cfg.merge_from_file(str(reference_dir / "thin_r50_coco_panoptic" / "config.yaml"))
    cfg.merge_from_list([
        "DATASETS.TRAIN", (test_datasets[dataset],),
        "INPUT.DATASET_MAPPER_NAME", mapper,
        "INPUT.IMAGE_SIZE", 64,
        "INPUT.MIN_SIZE_TRAIN", (64,),
        "INPUT.MAX_SIZE_TRAIN", 96,
        "INPUT.CROP.ENABLED", True,
        "INPUT.CROP.TYPE", "absolute",
        "INPUT.CROP.SIZE", (64, 64),
        "INPUT.SIZE_DIVISIBILITY", 64,
        "SOLVER.IMS_PER_BATCH", 2,
        "DATALOADER.NUM_WORKERS", 0,
        "MODEL.DEVICE", "cpu",
        "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 256,
    ])
    loader = build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, is_train=True))
    batch = next(iter(loader))
    assert len(batch) == 2
    for item in batch:
        image = item["image"]
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        assert tuple(image.shape[-2:]) == (64, 64)
        instances = item["instances"]
        assert isinstance(instances, Instances) and instances.image_size == (64, 64)
        assert instances.gt_classes.dtype == torch.int64
        masks = instances.gt_masks if isinstance(instances.gt_masks, torch.Tensor) else instances.gt_masks.tensor
        assert masks.dtype == torch.bool and masks.shape == (len(instances), 64, 64)
        if mapper == "mask_former_semantic":
            assert item["sem_seg"].shape == (64, 64)

    torch.manual_seed(0)
    model = d2_build_model(cfg).train()
    losses = model(batch)
    assert {"loss_ce", "loss_mask", "loss_dice"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


_CATALOG_CHECK = """
import detectron2.data  # Detectron2 registers its built-in datasets first
from detectron2.data import DatasetCatalog, MetadataCatalog
d2_loaders = {name: DatasetCatalog[name] for name in DatasetCatalog.list()}
import mask2former
from mask2former.data.datasets import BUILTIN_DATASET_NAMES, register_all
register_all()  # registering again skips every name already there
report = {
    "missing": [n for n in BUILTIN_DATASET_NAMES if n not in DatasetCatalog.list()],
    "replaced": [n for n, fn in d2_loaders.items() if DatasetCatalog[n] is not fn],
    "d2_names_kept": sorted(n for n in BUILTIN_DATASET_NAMES if n in d2_loaders),
    "panoptic_things": len(MetadataCatalog.get("coco_2017_val_panoptic").thing_classes),
    "panoptic_stuff": len(MetadataCatalog.get("coco_2017_val_panoptic").stuff_classes),
    "val_panoptic": len(DatasetCatalog.get("coco_2017_val_panoptic")),
    "with_sem_seg": [r["sem_seg_file_name"] for r in DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")],
    "instances": len(DatasetCatalog.get("coco_2017_val")),
}
print(json.dumps(report))
"""


def test_builtin_datasets_register_once_into_detectron2_catalogs(prepared_root):
    env = dict(os.environ, DETECTRON2_DATASETS=str(prepared_root))
    proc = _run_python("import json\n" + _CATALOG_CHECK, env=env)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["missing"] == [] and report["replaced"] == []
    assert {"coco_2017_val_panoptic", "coco_2017_val", "ade20k_sem_seg_val"} <= set(report["d2_names_kept"])
    assert (report["panoptic_things"], report["panoptic_stuff"]) == (80, 133)
    assert report["val_panoptic"] == 3 and report["instances"] == 3
    assert len(report["with_sem_seg"]) == 3 and all(os.path.isfile(f) for f in report["with_sem_seg"])


# ---------------------------------------------------------------------------------- evaluation


def _box_of(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0]


def _instance_predictions(dataset_name, seed=0):
    """Per image of ``dataset_name``: its ground-truth masks, some dropped, shifted or relabelled,
    plus false positives; scores random; boxes are the masks' boxes."""
    from pycocotools.coco import COCO

    rng = np.random.default_rng(seed)
    meta = MetadataCatalog.get(dataset_name)
    coco = COCO(meta.json_file)
    to_contiguous = meta.thing_dataset_id_to_contiguous_id
    num_classes = len(to_contiguous)
    inputs, outputs = [], []
    for record in DatasetCatalog.get(dataset_name):
        h, w = record["height"], record["width"]
        masks, classes = [], []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[record["image_id"]], iscrowd=False)):
            if rng.random() < 0.2:
                continue
            mask = np.roll(coco.annToMask(ann).astype(bool), tuple(rng.integers(-4, 5, size=2)), axis=(0, 1))
            label = to_contiguous[ann["category_id"]]
            masks.append(mask)
            classes.append(int(rng.integers(num_classes)) if rng.random() < 0.15 else label)
        for _ in range(3):
            mask = np.zeros((h, w), dtype=bool)
            y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
            mask[y : y + rng.integers(5, 40), x : x + rng.integers(5, 40)] = True
            masks.append(mask)
            classes.append(int(rng.integers(num_classes)))
        instances = Instances((h, w))
        instances.pred_masks = torch.from_numpy(np.stack(masks))
        instances.scores = torch.from_numpy(rng.uniform(0.05, 1.0, len(masks)).astype(np.float32))
        instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
        instances.pred_boxes = Boxes(torch.tensor([_box_of(m) for m in masks], dtype=torch.float32))
        inputs.append({k: record[k] for k in ("file_name", "image_id", "height", "width")})
        outputs.append({"instances": instances})
    return inputs, outputs


def _semantic_predictions(dataset_name, seed=0):
    """Per image: class scores [K, H, W] (float16) whose argmax is the ground truth with random
    rectangles relabelled and the ignored pixels given random classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    num_classes = len(MetadataCatalog.get(dataset_name).stuff_classes)
    inputs, outputs = [], []
    for record in DatasetCatalog.get(dataset_name):
        label = np.array(Image.open(record["sem_seg_file_name"]), dtype=np.int64)
        h, w = label.shape
        ignored = label == 255
        label[ignored] = rng.integers(num_classes, size=int(ignored.sum()))
        for _ in range(6):
            y, x = rng.integers(0, h - 60), rng.integers(0, w - 60)
            label[y : y + rng.integers(10, 60), x : x + rng.integers(10, 60)] = rng.integers(num_classes)
        scores = torch.zeros((num_classes, h, w), dtype=torch.float16)
        scores.scatter_(0, torch.from_numpy(label)[None], 1.0)
        inputs.append({k: record[k] for k in ("file_name", "image_id", "height", "width")})
        outputs.append({"sem_seg": scores})
    return inputs, outputs


def _evaluate(evaluator, inputs, outputs):
    evaluator.reset()
    for inp, out in zip(inputs, outputs):
        evaluator.process([inp], [out])
    return evaluator.evaluate()


def test_coco_evaluator_agrees_with_detectron2(test_datasets):
    name = test_datasets["instances"]
    inputs, outputs = _instance_predictions(name)
    ours = _evaluate(COCOEvaluator(name, distributed=False), inputs, outputs)
    theirs = _evaluate(D2COCOEvaluator(name, distributed=False), inputs, outputs)
    assert set(ours) == set(theirs) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert set(ours[task]) == set(theirs[task]), task
        assert 5 < theirs[task]["AP"] < 95, theirs[task]  # a non-trivial case
        for key, value in theirs[task].items():
            np.testing.assert_allclose(ours[task][key], value, rtol=1e-6, atol=1e-6, err_msg=f"{task} {key}")


def test_sem_seg_evaluator_agrees_with_detectron2(test_datasets):
    name = test_datasets["panoptic"]
    inputs, outputs = _semantic_predictions(name)
    ours = _evaluate(SemSegEvaluator(name, distributed=False), inputs, outputs)["sem_seg"]
    theirs = _evaluate(D2SemSegEvaluator(name, distributed=False), inputs, outputs)["sem_seg"]
    boundary = {k for k in theirs if k.startswith(("BoundaryIoU-", "min(IoU, B-Iou)-"))}
    assert set(ours) == set(theirs) - boundary  # Detectron2 adds boundary IoU
    assert 10 < theirs["mIoU"] < 99, theirs["mIoU"]
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-9, atol=1e-9, err_msg=key)


def _panoptic_predictions(dataset_name, seed=0):
    """Per image: the ground-truth segments, some dropped (void) and some relabelled with another
    category of the same kind (thing or stuff)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    meta = MetadataCatalog.get(dataset_name)
    things = sorted(meta.thing_dataset_id_to_contiguous_id.values())
    stuff = sorted(set(meta.stuff_dataset_id_to_contiguous_id.values()) - set(things))
    inputs, outputs = [], []
    for record in DatasetCatalog.get(dataset_name):
        rgb = np.array(Image.open(record["pan_seg_file_name"]), dtype=np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        seg = np.zeros(ids.shape, dtype=np.int32)
        info = []
        for k, segment in enumerate(record["segments_info"], start=1):
            if rng.random() < 0.2:
                continue
            seg[ids == segment["id"]] = k
            category = segment["category_id"]
            if rng.random() < 0.15:
                category = int(rng.choice(things if segment["isthing"] else stuff))
            info.append({"id": k, "isthing": bool(segment["isthing"]), "category_id": category})
        inputs.append({k: record[k] for k in ("file_name", "image_id", "height", "width")})
        outputs.append({"panoptic_seg": (torch.from_numpy(seg), info)})
    return inputs, outputs


def test_panoptic_evaluator_agrees_with_detectron2(test_datasets, tmp_path):
    pytest.importorskip("panopticapi", reason="Detectron2's COCOPanopticEvaluator needs panopticapi")
    name = test_datasets["panoptic"]
    inputs, outputs = _panoptic_predictions(name)
    ours = _evaluate(COCOPanopticEvaluator(name, str(tmp_path / "ours")), inputs, copy.deepcopy(outputs))
    theirs = _evaluate(D2COCOPanopticEvaluator(name, str(tmp_path / "d2")), inputs, copy.deepcopy(outputs))
    assert 10 < theirs["panoptic_seg"]["PQ"] < 99, theirs["panoptic_seg"]
    for key, value in theirs["panoptic_seg"].items():
        np.testing.assert_allclose(ours["panoptic_seg"][key], value, rtol=1e-6, atol=1e-6, err_msg=key)


def test_panoptic_evaluator_choice(test_datasets, caplog):
    name = test_datasets["panoptic"]
    with caplog.at_level(logging.WARNING, logger="mask2former.engine.d2_trainer"):
        evaluator = d2_trainer.build_panoptic_evaluator(name, None)
    try:
        import panopticapi  # noqa: F401
    except ImportError:
        assert isinstance(evaluator, COCOPanopticEvaluator)
        assert "panopticapi is not installed" in caplog.text
    else:
        assert isinstance(evaluator, D2COCOPanopticEvaluator)


def test_detectron2_trainer_evaluators_optimizer_and_schedule(reference_dir, test_datasets):
    cfg = _fixture_cfg(reference_dir, "thin_r50_coco_panoptic")
    evaluators = d2_trainer.Detectron2Trainer.build_evaluator(cfg, test_datasets["panoptic"], "unused")
    kinds = {type(e) for e in evaluators._evaluators}
    assert {D2SemSegEvaluator, D2COCOEvaluator} <= kinds
    assert kinds & {D2COCOPanopticEvaluator, COCOPanopticEvaluator}
    with pytest.raises(NotImplementedError, match="No evaluator"):
        d2_trainer.Detectron2Trainer.build_evaluator(cfg, "d2plugin_no_evaluator_type", "unused")
    MetadataCatalog.remove("d2plugin_no_evaluator_type")

    # Gradient clipping happens inside optimizer.step() (after AMP unscaling).
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    cfg.merge_from_list(["SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
                         "full_model", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.01, "SOLVER.OPTIMIZER", "SGD",
                         "SOLVER.BASE_LR", 1.0, "SOLVER.WEIGHT_DECAY", 0.0, "SOLVER.MOMENTUM", 0.0])
    optimizer = d2_trainer.Detectron2Trainer.build_optimizer(cfg, model)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    (model(torch.ones(2, 4)) * 1000).sum().backward()
    optimizer.step()
    update = torch.cat([p.detach().flatten() for p in model.parameters()]) - before
    assert update.norm().item() == pytest.approx(0.01, rel=1e-4)  # SGD, lr 1: the clipped gradient

    # WarmupPolyLR: Detectron2's DeepLab schedule (or ours without that project); values agree.
    cfg.merge_from_list(["SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR", "SOLVER.MAX_ITER", 100,
                         "SOLVER.WARMUP_ITERS", 0, "SOLVER.POLY_LR_POWER", 0.9])
    from mask2former.solver import build_lr_scheduler

    lrs = []
    for build in (d2_trainer.Detectron2Trainer.build_lr_scheduler, build_lr_scheduler):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = build(cfg, opt)
        values = []
        for _ in range(100):
            values.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
        lrs.append(values)
    np.testing.assert_allclose(lrs[0], lrs[1], rtol=1e-6, atol=1e-9)
    assert lrs[0][50] == pytest.approx(0.5**0.9, rel=1e-6)


# ------------------------------------------------------------------------ DefaultTrainer run


def test_train_net_detectron2_engine_trains_and_evaluates(reference_dir, prepared_root, tmp_path):
    """A short run of ``train_net.py --engine detectron2`` (Detectron2's DefaultTrainer) on the
    shared COCO samples: loads model-zoo-format weights with DetectionCheckpointer, trains with
    the LSJ panoptic mapper on Detectron2's own ``coco_2017_val_panoptic`` registration, checkpoints,
    follows the LR schedule and evaluates PQ, COCO AP and mIoU."""
    fixture = reference_dir / "thin_r50_coco_panoptic"
    model = yaml.safe_load((fixture / "config.yaml").read_text())["MODEL"]
    model.update(DEVICE="cpu", WEIGHTS=str(fixture / "model.pkl"))
    model["MASK_FORMER"]["TRAIN_NUM_POINTS"] = 256
    config = {
        "_BASE_": str(REPO / "configs" / "coco" / "panoptic" / "R50.yaml"),
        "MODEL": model,
        "DATASETS": {"TRAIN": ["coco_2017_val_panoptic"], "TEST": ["coco_2017_val_panoptic_with_sem_seg"]},
        "INPUT": {"IMAGE_SIZE": 64, "MIN_SIZE_TEST": 64, "MAX_SIZE_TEST": 128},
        "SOLVER": {"IMS_PER_BATCH": 2, "MAX_ITER": 2, "STEPS": [1], "WARMUP_ITERS": 0,
                   "CHECKPOINT_PERIOD": 1, "AMP": {"ENABLED": False}},
        "DATALOADER": {"NUM_WORKERS": 0},
        "TEST": {"EVAL_PERIOD": 0},
        "SEED": 0,
        "OUTPUT_DIR": str(tmp_path / "output"),
    }
    (tmp_path / "thin.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, DETECTRON2_DATASETS=str(prepared_root))

    def train_net(*args):
        proc = _run_python(
            "import runpy\n"
            "sys.argv = ['train_net.py', *sys.argv[1:]]\n"
            "runpy.run_path('train_net.py', run_name='__main__')\n",
            "--engine", "detectron2", "--config-file", str(tmp_path / "thin.yaml"), *args,
            env=env, timeout=1200,
        )
        return proc.stdout + proc.stderr

    log = train_net()
    out = tmp_path / "output"
    assert f"[DetectionCheckpointer] Loading from {fixture / 'model.pkl'}" in log
    assert "d2.engine.train_loop]: Starting training from iteration 0" in log
    for name in ("model_0000000.pth", "model_final.pth", "last_checkpoint", "config.yaml"):
        assert (out / name).is_file(), name
    checkpoint = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 1  # DefaultTrainer's full state: optimizer, LR scheduler hook
    assert "optimizer" in checkpoint["trainer"]["_trainer"] and "LRScheduler" in checkpoint["trainer"]["hooks"]

    # metrics.json: the last training iteration, then the final evaluation's results.
    train, results = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert train["iteration"] == 1 and np.isfinite(train["total_loss"])
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0"} <= set(train)
    assert train["lr"] == pytest.approx(1e-5)  # BASE_LR 1e-4, x0.1 from iteration 1 (SOLVER.STEPS)
    for key in ("sem_seg/mIoU", "sem_seg/fwIoU", "bbox/AP", "segm/AP", "panoptic_seg/PQ", "panoptic_seg/SQ"):
        assert key in results, key
    for task in ("sem_seg", "bbox", "segm", "panoptic_seg"):
        assert f"copypaste: Task: {task}" in log, task
    assert (out / "inference" / "sem_seg_evaluation.pth").is_file()  # Detectron2's SemSegEvaluator
    assert (out / "inference" / "coco_instances_results.json").is_file()  # Detectron2's COCOEvaluator
    try:
        import panopticapi  # noqa: F401
    except ImportError:
        assert "panopticapi is not installed" in log

    # --eval-only on the final checkpoint reproduces the evaluation at the end of training.
    eval_log = train_net("--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"),
                         "OUTPUT_DIR", str(tmp_path / "eval_only"))
    assert f"[DetectionCheckpointer] Loading from {out / 'model_final.pth'}" in eval_log
    copypaste = [line.split("copypaste: ")[1] for line in log.splitlines() if "copypaste: " in line]
    assert len(copypaste) == 4 * 3  # per task: name, metric names, values
    assert [line.split("copypaste: ")[1] for line in eval_log.splitlines() if "copypaste: " in line] == copypaste
