"""Checkpointer: model-zoo .pkl, .pth/.pt, URLs, strict mode and clear errors."""

import functools
import http.server
import logging
import pickle
import threading
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from mask2former.checkpoint import Checkpointer, IncompatibleCheckpointError, file_io

THIN_FIXTURES = ("thin_r50_coco_panoptic", "thin_swin_coco_instance", "thin_r50_ade20k_semantic")


class _Versioned(nn.Module):
    """Records the ``version`` its state-dict metadata carries when loaded."""

    _version = 2

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.loaded_version = "not loaded"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        self.loaded_version = local_metadata.get("version")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


class TinyNet(nn.Module):
    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3)
        self.norm = nn.BatchNorm2d(channels)
        self.head = _Versioned()


def _randomized(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return model


def _numpy_state(model: nn.Module) -> "OrderedDict[str, np.ndarray]":
    state = model.state_dict()
    arrays = OrderedDict((k, v.numpy().copy()) for k, v in state.items())
    arrays._metadata = state._metadata
    return arrays


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _write_pickle(path, obj) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return str(path)


def test_model_zoo_pkl(tmp_path):
    source = _randomized(TinyNet(), 0)
    path = _write_pickle(
        tmp_path / "model_final.pkl", {"model": _numpy_state(source), "__author__": "test"}
    )
    target = TinyNet()
    extra = Checkpointer(target).load(path, strict=True)
    _assert_same_weights(source, target)
    assert extra == {"__author__": "test"}
    assert target.head.loaded_version == 2  # the pickled _metadata reached the module


def test_bare_dict_pkl(tmp_path):
    source = _randomized(TinyNet(), 1)
    arrays = {k: v.numpy() for k, v in source.state_dict().items()}
    path = _write_pickle(tmp_path / "weights.pkl", arrays)
    target = TinyNet()
    Checkpointer(target).load(path, strict=True)
    _assert_same_weights(source, target)
    assert target.head.loaded_version is None  # no metadata stored: loaded as is


def test_pth_round_trip(tmp_path):
    source = _randomized(TinyNet(), 2)
    Checkpointer(source, str(tmp_path)).save("model_0000009", iteration=9)
    target = TinyNet()
    extra = Checkpointer(target).load(str(tmp_path / "model_0000009.pth"), strict=True)
    _assert_same_weights(source, target)
    assert extra == {"iteration": 9}
    assert target.head.loaded_version == 2


def test_bare_state_dict_pt(tmp_path):
    source = _randomized(TinyNet(), 3)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    target = TinyNet()
    Checkpointer(target).load(str(tmp_path / "weights.pt"), strict=True)
    _assert_same_weights(source, target)


def test_empty_path_loads_nothing():
    model = _randomized(TinyNet(), 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert Checkpointer(model).load("") == {}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_file(tmp_path):
    path = tmp_path / "does_not_exist.pkl"
    with pytest.raises(FileNotFoundError, match="does_not_exist.pkl"):
        Checkpointer(TinyNet()).load(str(path))


@pytest.mark.parametrize("name", ["corrupt.pkl", "corrupt.pth"])
def test_corrupt_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00garbage, not a checkpoint" * 8)
    with pytest.raises(ValueError, match=rf"Cannot read checkpoint .*{name}.*expected"):
        Checkpointer(TinyNet()).load(str(path))


@pytest.mark.parametrize("content", [[1, 2, 3], {"model": {"conv.weight": "not an array"}}, {}])
def test_wrong_content(tmp_path, content):
    path = _write_pickle(tmp_path / "wrong.pkl", content)
    with pytest.raises(ValueError, match=r"wrong\.pkl.*expected"):
        Checkpointer(TinyNet()).load(path)


def test_shape_mismatch_strict_and_not(tmp_path, caplog):
    path = _write_pickle(
        tmp_path / "small.pkl",
        {"model": _numpy_state(_randomized(TinyNet(4), 5)), "__author__": "test"},
    )
    with pytest.raises(IncompatibleCheckpointError) as info:
        Checkpointer(TinyNet(6)).load(path, strict=True)
    message = str(info.value)
    assert "small.pkl" in message
    assert "conv.weight: checkpoint (4, 3, 3, 3) vs model (6, 3, 3, 3)" in message
    assert info.value.incompatible.missing_keys == []  # reshaped keys are not also "missing"
    assert {k for k, _, _ in info.value.incompatible.incorrect_shapes} == {
        "conv.weight",
        "conv.bias",
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
    }

    source = _randomized(TinyNet(4), 5)
    target = TinyNet(6)
    with caplog.at_level(logging.WARNING):
        Checkpointer(target, allow_partial=True).load(path)  # 3 of 9 tensors shared: partial load
    assert "conv.weight" in caplog.text and "incompatible shapes" in caplog.text
    assert torch.equal(target.head.proj.weight, source.head.proj.weight)  # the rest still loads


def test_missing_and_unexpected_strict(tmp_path):
    arrays = _numpy_state(_randomized(TinyNet(), 6))
    del arrays["head.proj.bias"]
    arrays["extra.weight"] = np.zeros(3, np.float32)
    path = _write_pickle(tmp_path / "partial.pkl", {"model": arrays, "__author__": "test"})
    with pytest.raises(IncompatibleCheckpointError) as info:
        Checkpointer(TinyNet()).load(path, strict=True)
    assert "missing in the checkpoint (1):\n    head.proj.bias" in str(info.value)
    assert "unexpected in the checkpoint (1):\n    extra.weight" in str(info.value)


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """A local HTTP server over ``tmp_path/www``; downloads are cached under ``tmp_path/cache``."""
    root = tmp_path / "www"
    root.mkdir()
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_url_download_is_cached(http_root, tmp_path):
    root, base_url = http_root
    source = _randomized(TinyNet(), 7)
    _write_pickle(root / "remote_model.pkl", {"model": _numpy_state(source), "__author__": "test"})
    target = TinyNet()
    Checkpointer(target).load(base_url + "remote_model.pkl", strict=True)
    _assert_same_weights(source, target)
    assert (tmp_path / "cache" / "remote_model.pkl").is_file()


def test_detectron2_prefix(http_root, monkeypatch):
    assert file_io.to_url("detectron2://ImageNetPretrained/torchvision/R-50.pkl") == (
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/torchvision/R-50.pkl"
    )
    root, base_url = http_root
    monkeypatch.setattr(file_io, "DETECTRON2_URL_PREFIX", base_url)
    (root / "zoo").mkdir()
    source = _randomized(TinyNet(), 8)
    _write_pickle(
        root / "zoo" / "d2_model.pkl", {"model": _numpy_state(source), "__author__": "test"}
    )
    target = TinyNet()
    Checkpointer(target).load("detectron2://zoo/d2_model.pkl", strict=True)
    _assert_same_weights(source, target)


def test_unreachable_url(http_root):
    url = http_root[1] + "not_served.pkl"  # the server answers 404
    with pytest.raises(OSError, match=rf"{url} could not be downloaded"):
        Checkpointer(TinyNet()).load(url)


@pytest.mark.parametrize("fixture", THIN_FIXTURES)
def test_fixture_weights_load_strictly(reference_dir, fixture):
    from mask2former import build_model, get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(reference_dir / fixture / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    Checkpointer(model).load(str(reference_dir / fixture / "model.pkl"), strict=True)
    with open(reference_dir / fixture / "model.pkl", "rb") as f:
        stored = pickle.load(f, encoding="latin1")["model"]
    state = model.state_dict()
    assert set(state) == set(stored)
    for key, array in stored.items():
        assert np.array_equal(state[key].numpy(), array), key


def test_matching_heuristics_suffix_names(tmp_path):
    source = _randomized(TinyNet(), 9)
    arrays = {
        k.replace("head.", "", 1): v.numpy()
        for k, v in source.state_dict().items()
        if k.startswith("head.")
    }
    arrays["fc.weight"] = np.zeros((10, 3), np.float32)  # classifier of a pretrained backbone
    path = _write_pickle(
        tmp_path / "R-tiny.pkl",
        {"model": arrays, "__author__": "torchvision", "matching_heuristics": True},
    )
    target = TinyNet()
    with pytest.raises(IncompatibleCheckpointError) as info:
        Checkpointer(target).load(path, strict=True)
    assert info.value.incompatible.unexpected_keys == ["fc.weight"]
    assert all(k.startswith(("conv.", "norm.")) for k in info.value.incompatible.missing_keys)
    assert torch.equal(target.head.proj.weight, source.head.proj.weight)

    without_flag = _write_pickle(tmp_path / "unflagged.pkl", {"model": arrays, "__author__": "x"})
    fresh = TinyNet()
    before = fresh.head.proj.weight.clone()
    with pytest.raises(IncompatibleCheckpointError):  # keys taken as they are: nothing matches
        Checkpointer(fresh).load(without_flag)
    assert torch.equal(fresh.head.proj.weight, before)


def test_matching_heuristics_ambiguity(tmp_path):
    model = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
    path = _write_pickle(
        tmp_path / "ambiguous.pkl",
        {
            "model": {"weight": np.zeros((2, 2), np.float32)},
            "__author__": "x",
            "matching_heuristics": True,
        },
    )
    with pytest.raises(ValueError, match="'weight' matches both"):
        Checkpointer(model).load(path)


def test_pretrained_backbone_into_full_model(reference_dir, tmp_path):
    """A backbone-only file without the ``backbone.`` prefix, as tools/convert-*-to-d2.py write."""
    from mask2former import build_model, get_cfg

    fixture = reference_dir / "thin_r50_coco_panoptic"
    with open(fixture / "model.pkl", "rb") as f:
        stored = pickle.load(f, encoding="latin1")["model"]
    backbone = {k[len("backbone.") :]: v for k, v in stored.items() if k.startswith("backbone.")}
    path = _write_pickle(
        tmp_path / "R-50-thin.pkl",
        {"model": backbone, "__author__": "torchvision", "matching_heuristics": True},
    )
    cfg = get_cfg()
    cfg.merge_from_file(str(fixture / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    Checkpointer(model).load(path)
    state = model.state_dict()
    for key, array in backbone.items():
        assert np.array_equal(state["backbone." + key].numpy(), array), key


def test_pth_with_numpy_entries(tmp_path):
    """Training checkpoints may carry numpy RNG states; weights may be numpy arrays."""
    source = _randomized(TinyNet(), 10)
    rng_state = np.random.RandomState(0).get_state()
    torch.save(
        {
            "model": {k: v.numpy() for k, v in source.state_dict().items()},
            "rng": rng_state,
            "iteration": np.int64(5),
        },
        tmp_path / "model_0000005.pth",
    )
    target = TinyNet()
    extra = Checkpointer(target).load(str(tmp_path / "model_0000005.pth"), strict=True)
    _assert_same_weights(source, target)
    assert extra["iteration"] == 5
    np.testing.assert_array_equal(extra["rng"][1], rng_state[1])


def test_pth_with_arbitrary_objects_is_refused(tmp_path):
    import datetime

    torch.save(
        {"model": TinyNet().state_dict(), "when": datetime.date(2022, 6, 1)},
        tmp_path / "objects.pth",
    )
    with pytest.raises(ValueError, match=r"objects\.pth"):
        Checkpointer(TinyNet()).load(str(tmp_path / "objects.pth"))
