"""Shared test fixtures: paths to the real sample data and the parity fixtures beside the repo."""
from pathlib import Path

import pytest

from training_utils import make_dataset_root

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository; tests using it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"sample data and parity fixtures not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def datasets_root(shared_dir) -> Path:
    """Real COCO / ADE20K samples in the ``$DETECTRON2_DATASETS`` layout."""
    return shared_dir / "data" / "datasets"


@pytest.fixture(scope="session")
def reference_dir(shared_dir) -> Path:
    """Parity fixtures produced by the original implementation."""
    return shared_dir / "reference"


@pytest.fixture(scope="module")
def dataset_root(datasets_root, tmp_path_factory, monkeypatch_module):
    """A ``$DETECTRON2_DATASETS`` root over the real COCO samples (see ``training_utils``), with
    the built-in datasets registered on it for the module's tests."""
    root = make_dataset_root(datasets_root, tmp_path_factory.mktemp("datasets"))
    monkeypatch_module.setenv("DETECTRON2_DATASETS", str(root))
    _reregister(root)
    yield root
    _reregister(None)


@pytest.fixture(scope="module")
def monkeypatch_module():
    """A ``MonkeyPatch`` undone after the module's tests."""
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _reregister(root):
    from mask2former.data.catalog import DatasetCatalog, MetadataCatalog
    from mask2former.data.datasets import BUILTIN_DATASET_NAMES, register_all

    for name in BUILTIN_DATASET_NAMES:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    register_all(None if root is None else str(root))
