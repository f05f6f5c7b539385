"""The model zoo: MODEL_ZOO.md, the catalog, the configs and the ``zoo://`` checkpoints agree, and
cached checkpoints load without any network access (every test here runs offline)."""
import http.server
import importlib.util
import json
import pickle
import re
import shutil
import socket
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from mask2former import Predictor, build_model, get_cfg, model_zoo
from mask2former.checkpoint import Checkpointer
from mask2former.checkpoint.file_io import to_url
from mask2former.model_zoo.markdown import GENERATED_MARKER, render_tables
from mask2former.modeling.precision import prepare_for_inference
from mask2former.video.predictor import VideoPredictor

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
MODEL_ZOO_MD = REPO_ROOT / "MODEL_ZOO.md"
NAMES = model_zoo.list_models()
COCO_TRAIN2017_IMAGES = 118287  # the epochs of the COCO schedules are passes over train2017
R50_PANOPTIC_URL = (
    "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/"
    "maskformer2_R50_bs16_50ep/model_final_94dc52.pkl"
)
# iopath's cache layout: the URL's path below $FVCORE_CACHE, without the host.
R50_PANOPTIC_CACHE = (
    "maskformer/mask2former/coco/panoptic/maskformer2_R50_bs16_50ep/model_final_94dc52.pkl"
)
YTVIS2019_R50_URL = (
    "https://dl.fbaipublicfiles.com/maskformer/video_mask2former/ytvis_2019/"
    "video_maskformer2_R50_bs16_8ep/model_final_34112b.pkl"
)
YTVIS2019_R50_CACHE = (
    "maskformer/video_mask2former/ytvis_2019/video_maskformer2_R50_bs16_8ep/model_final_34112b.pkl"
)


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection fails, as on a machine without network."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def no_download(no_network, monkeypatch):
    """``no_network``, and any download attempt fails the test."""
    import iopath.common.file_io

    def forbidden(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(iopath.common.file_io, "download", forbidden)


def _markdown_rows():
    """``{name: (config link, url)}`` of the table rows of MODEL_ZOO.md."""
    row = re.compile(r"^\| \[`([^`]+)`\]\(([^)]+)\) \|.*\| \[([^\]]+)\]\((https://[^)]+)\) \|$")
    rows = {}
    for line in MODEL_ZOO_MD.read_text().splitlines():
        match = row.match(line)
        if match:
            name, config, file_name, url = match.groups()
            assert url.endswith("/" + file_name), line
            assert name not in rows, f"{name} has two rows"
            rows[name] = (config, url)
    return rows


def _header(name: str) -> str:
    lines = (CONFIG_DIR / f"{name}.yaml").read_text().splitlines()
    return "\n".join(line for line in lines if line.startswith("#"))


def _run_tool(monkeypatch, *args: str) -> int:
    """``tools/model_zoo_md.py ARGS`` in this process; its exit status."""
    path = REPO_ROOT / "tools" / "model_zoo_md.py"
    spec = importlib.util.spec_from_file_location("model_zoo_md", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(sys, "argv", ["model_zoo_md.py", *args])
    return tool.main()


def test_model_zoo_md_is_generated_from_the_catalog(monkeypatch):
    text = MODEL_ZOO_MD.read_text()
    assert GENERATED_MARKER in text
    assert text.split(GENERATED_MARKER + "\n", 1)[1] == "\n" + render_tables()
    assert _run_tool(monkeypatch, "--check") == 0


def test_model_zoo_md_check_detects_a_stale_file(tmp_path, monkeypatch):
    stale = tmp_path / "MODEL_ZOO.md"
    stale.write_text(MODEL_ZOO_MD.read_text().replace("| 51.9 |", "| 52.9 |", 1))
    assert _run_tool(monkeypatch, "--path", str(stale), "--check") == 1
    assert _run_tool(monkeypatch, "--path", str(stale)) == 0
    assert stale.read_text() == MODEL_ZOO_MD.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MODEL_ZOO.md"]  # no temporary file left


def test_every_row_resolves_to_its_url():
    rows = _markdown_rows()
    assert sorted(rows) == sorted(NAMES)
    assert len(set(url for _, url in rows.values())) == len(rows), "a checkpoint URL is listed twice"
    for name, (config, url) in rows.items():
        assert config == f"configs/{name}.yaml"
        assert model_zoo.get_checkpoint_url(name) == url
        assert model_zoo.get_checkpoint_url(f"configs/{name}.yaml") == url
        assert to_url(f"zoo://{name}") == url
        assert model_zoo.get_config(name, trained=True).MODEL.WEIGHTS == url
        entry = model_zoo.get_model_info(name)
        if entry.task == "video instance":
            official = f"https://dl.fbaipublicfiles.com/maskformer/video_mask2former/{entry.dataset}/"
        else:
            official = f"https://dl.fbaipublicfiles.com/maskformer/mask2former/{entry.dataset}/{entry.task}/"
        assert url.startswith(official)
    assert model_zoo.get_checkpoint_url("zoo://youtubevis_2019/R50") == YTVIS2019_R50_URL


def test_row_counts():
    tasks = [model_zoo.get_model_info(name).task for name in NAMES]
    counts = {task: tasks.count(task) for task in ("panoptic", "instance", "semantic", "video instance")}
    assert counts == {"panoptic": 17, "instance": 15, "semantic": 15, "video instance": 12}
    assert len(NAMES) == 59
    summary = "59 models: 17 panoptic, 15 instance, 15 semantic, 12 video instance."
    assert summary in MODEL_ZOO_MD.read_text()
    for year in (2019, 2021):
        assert model_zoo.list_models(dataset=f"ytvis_{year}", task="video instance") == [
            f"youtubevis_{year}/{backbone}"
            for backbone in ("R50", "R101", "swin_T", "swin_S", "swin_B", "swin_L")
        ]


def test_every_config_is_in_the_zoo():
    configs = sorted(
        p.relative_to(CONFIG_DIR).with_suffix("").as_posix()
        for p in CONFIG_DIR.rglob("*.yaml")
        if p.name != "Base.yaml"
    )
    assert sorted(NAMES) == configs


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_and_matches_the_published_model(name):
    entry = model_zoo.get_model_info(name)
    header = _header(name)
    model_dir, file_name = entry.url.split("/")[-2:]
    assert f"Published model: {model_dir}" in header
    assert f"checkpoint {file_name}" in header
    for metric, value in entry.metrics.items():
        if metric in ("PQ", "AP", "mIoU", "AP50"):
            assert f"{metric} {value:.1f}" in header, (metric, header)

    cfg = model_zoo.get_config(name)
    assert Path(model_zoo.get_config_file(name)) == CONFIG_DIR / f"{name}.yaml"
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == entry.queries
    amount, unit = entry.schedule.split()
    if unit == "epochs":
        epochs = cfg.SOLVER.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH / COCO_TRAIN2017_IMAGES
        assert round(epochs) == int(amount)
    else:
        assert unit == "iterations" and cfg.SOLVER.MAX_ITER == int(amount.rstrip("k")) * 1000

    video = entry.task == "video instance"
    assert (cfg.MODEL.META_ARCHITECTURE == "VideoMaskFormer") == video
    if video:
        _check_video_initialisation(entry, cfg, header)

    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):  # shapes without memory or initialisation
        model = build_model(cfg)
    assert type(model).__name__ == cfg.MODEL.META_ARCHITECTURE
    assert sum(p.numel() for p in model.parameters()) == entry.params


def _check_video_initialisation(entry, cfg, header):
    """A video config's ``MODEL.WEIGHTS`` (named in its header too) is the checkpoint of the
    published COCO instance model with the same backbone, that training starts from."""
    start = [m for m in model_zoo.MODELS if m.checkpoint_file == cfg.MODEL.WEIGHTS]
    assert len(start) == 1, cfg.MODEL.WEIGHTS
    assert (start[0].dataset, start[0].task, start[0].backbone) == ("coco", "instance", entry.backbone)
    assert f"{start[0].url.split('/')[-2]} ({start[0].checkpoint_file})" in header


def test_params_equal_the_published_models(reference_dir):
    by_original = {model.original_config: model for model in model_zoo.MODELS}
    checked = 0
    for path in sorted((reference_dir / "keys").glob("*.json")):
        manifest = json.loads(path.read_text())
        assert manifest["config"] in by_original, f"{path.name}: {manifest['config']} not in the zoo"
        assert by_original[manifest["config"]].params == manifest["num_params"], path.name
        checked += 1
    assert checked == 20  # 12 image models, 8 video models


def test_unknown_name_lists_close_names():
    with pytest.raises(KeyError, match=r"'coco/panoptic/R5' is not in .*close names: coco/panoptic/R50"):
        model_zoo.get_checkpoint_url("coco/panoptic/R5")
    with pytest.raises(model_zoo.UnknownModelError, match="close names: .*ade20k/semantic/swin_L"):
        Checkpointer(torch.nn.Linear(1, 1)).load("zoo://ade20k/semantic/swin_l")
    with pytest.raises(KeyError, match="list_models"):
        model_zoo.get_config("no-such-model")


def _thin_panoptic(reference_dir, weights: str):
    cfg = get_cfg()
    cfg.merge_from_file(str(reference_dir / "thin_r50_coco_panoptic" / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = weights
    return cfg


def _place_in_cache(cache_dir: Path, source: Path, relative: str = R50_PANOPTIC_CACHE) -> Path:
    target = cache_dir / relative
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    return target


def _assert_weights(model, arrays):
    state = model.state_dict()
    for key, value in arrays.items():
        np.testing.assert_array_equal(state[key].cpu().numpy(), value, err_msg=key)


def _assert_prepared_weights(model, arrays, cfg):
    """``model`` (a predictor's) went through ``prepare_for_inference``, which folds the frozen batch
    norms: it must equal the checkpoint's arrays loaded into a fresh model, prepared the same way."""
    expected = build_model(cfg)
    state = OrderedDict((k, torch.as_tensor(np.asarray(v))) for k, v in arrays.items())
    state._metadata = getattr(arrays, "_metadata", OrderedDict())
    expected.load_state_dict(state, strict=True)
    reference = prepare_for_inference(expected, cfg.TEST.PRECISION).state_dict()
    actual = model.state_dict()
    assert actual.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(actual[key].cpu(), value.cpu()), key


@pytest.mark.parametrize("weights", ["zoo://coco/panoptic/R50", R50_PANOPTIC_URL])
def test_cached_checkpoint_loads_without_network(
    reference_dir, tmp_path, monkeypatch, no_download, weights
):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    fixture = reference_dir / "thin_r50_coco_panoptic" / "model.pkl"
    _place_in_cache(tmp_path, fixture)
    with open(fixture, "rb") as f:
        arrays = pickle.load(f)["model"]

    cfg = _thin_panoptic(reference_dir, weights)
    model = build_model(cfg)
    Checkpointer(model).load(cfg.MODEL.WEIGHTS, strict=True)
    _assert_weights(model, arrays)
    _assert_prepared_weights(Predictor(cfg).model, arrays, cfg)  # the demo's path


def test_cached_video_checkpoint_loads_without_network(reference_dir, tmp_path, monkeypatch, no_network):
    """``zoo://youtubevis_2019/R50`` is read from the cache path of the video checkpoint's URL, by
    the video predictor (what ``demo/demo.py --video-input`` uses); with an empty cache the error
    names the URL and that path."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    fixture = reference_dir / "thin_r50_ytvis2019_video"
    _place_in_cache(tmp_path, fixture / "model.pkl", YTVIS2019_R50_CACHE)
    with open(fixture / "model.pkl", "rb") as f:
        arrays = pickle.load(f)["model"]
    cfg = get_cfg()
    cfg.merge_from_file(str(fixture / "config.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "zoo://youtubevis_2019/R50"])
    _assert_prepared_weights(VideoPredictor(cfg).model, arrays, cfg)

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "empty"))
    with pytest.raises(OSError) as error:
        VideoPredictor(cfg)
    message = str(error.value)
    assert YTVIS2019_R50_URL in message and str(tmp_path / "empty" / YTVIS2019_R50_CACHE) in message


def test_offline_error_names_url_and_cache_path(reference_dir, tmp_path, monkeypatch, no_network):
    # Loaded once from another cache directory: that file is not used once $FVCORE_CACHE changed.
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "first"))
    _place_in_cache(tmp_path / "first", reference_dir / "thin_r50_coco_panoptic" / "model.pkl")
    cfg = _thin_panoptic(reference_dir, "zoo://coco/panoptic/R50")
    model = build_model(cfg)
    Checkpointer(model).load(cfg.MODEL.WEIGHTS)

    empty_cache = tmp_path / "second"
    monkeypatch.setenv("FVCORE_CACHE", str(empty_cache))
    expected_path = empty_cache / R50_PANOPTIC_CACHE
    with pytest.raises(OSError) as error:
        Checkpointer(model).load("zoo://coco/panoptic/R50")
    message = str(error.value)
    assert R50_PANOPTIC_URL in message and str(expected_path) in message, message
    assert "\n" not in message
    assert not expected_path.exists(), "a partial download was left in the cache"
    with pytest.raises(OSError, match=re.escape(str(expected_path))):
        model_zoo.get("coco/panoptic/R50", trained=True, device="cpu")


def test_get_trained_loads_the_cached_checkpoint_strictly(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    torch.manual_seed(0)
    published = model_zoo.get("coco/panoptic/R50", device="cpu")  # random weights, full size
    arrays = {k: v.numpy() for k, v in published.state_dict().items()}
    target = tmp_path / R50_PANOPTIC_CACHE
    target.parent.mkdir(parents=True)
    with open(target, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "test"}, f)

    torch.manual_seed(1)
    model = model_zoo.get("coco/panoptic/R50", trained=True, device="cpu")
    _assert_weights(model, arrays)

    del arrays["sem_seg_head.predictor.class_embed.bias"]
    with open(target, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "test"}, f)
    with pytest.raises(ValueError, match="class_embed.bias"):
        model_zoo.get("coco/panoptic/R50", trained=True, device="cpu")


def test_url_downloaded_once_into_the_cache_layout(tmp_path, monkeypatch):
    """Through a local HTTP server: one request, the file at <cache>/<URL path>; after the cache
    directory changed, the earlier download is not reused and the error names the new path."""
    served = tmp_path / "www" / "maskformer" / "demo"
    served.mkdir(parents=True)
    source = torch.nn.Linear(3, 2)
    with open(served / "model_final_abcdef.pkl", "wb") as f:
        pickle.dump({"model": {k: v.detach().numpy() for k, v in source.state_dict().items()}}, f)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path / "www"), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/maskformer/demo/model_final_abcdef.pkl"
    try:
        monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
        for _ in range(2):
            target = torch.nn.Linear(3, 2)
            Checkpointer(target).load(url, strict=True)
            assert torch.equal(target.weight, source.weight)
        assert requests == ["/maskformer/demo/model_final_abcdef.pkl"]
        assert (tmp_path / "cache" / "maskformer" / "demo" / "model_final_abcdef.pkl").is_file()
    finally:
        server.shutdown()
        server.server_close()

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "other"))
    with pytest.raises(OSError, match=re.escape(str(tmp_path / "other" / "maskformer" / "demo"))):
        Checkpointer(torch.nn.Linear(3, 2)).load(url)
