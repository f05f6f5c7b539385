"""Shared test fixtures: paths to the real sample data and the parity fixtures beside the repo."""
from pathlib import Path

import pytest

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
