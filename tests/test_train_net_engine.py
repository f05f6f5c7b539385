"""``train_net.py --engine``: the standalone engine is the default, and without Detectron2 the
Detectron2 engine exits with installation instructions (Detectron2 is simulated absent by making
``import detectron2`` fail in a fresh interpreter, so this also runs where it is installed)."""
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WITHOUT_DETECTRON2 = "import sys; sys.modules['detectron2'] = None\n"


def _run_without_detectron2(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_DETECTRON2 + code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_standalone_engine_is_the_default():
    parser = runpy.run_path(str(REPO / "train_net.py"), run_name="train_net")["argument_parser"]()
    args = parser.parse_args(["--config-file", "x.yaml", "SOLVER.MAX_ITER", "10"])
    assert args.engine == "standalone" and args.opts == ["SOLVER.MAX_ITER", "10"]
    args = parser.parse_args(["--config-file", "x.yaml", "--engine", "detectron2"])
    assert args.engine == "detectron2"
    with pytest.raises(SystemExit):
        parser.parse_args(["--config-file", "x.yaml", "--engine", "lightning"])


def test_detectron2_engine_without_detectron2_exits_with_instructions():
    proc = _run_without_detectron2(
        "import runpy\n"
        "sys.argv = ['train_net.py', *sys.argv[1:]]\n"
        "runpy.run_path('train_net.py', run_name='__main__')\n",
        "--engine", "detectron2", "--config-file", "configs/coco/panoptic/R50.yaml",
    )
    assert proc.returncode == 1, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: The Detectron2 engine (`--engine detectron2`) needs Detectron2")
    assert "pip install -e \".[detectron2]\"" in message and "git" in message
    assert "Traceback" not in proc.stderr


def test_d2_trainer_module_needs_detectron2():
    proc = _run_without_detectron2(
        "import mask2former\n"
        "try:\n"
        "    import mask2former.engine.d2_trainer\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "needs Detectron2, which is not installed" in proc.stdout
