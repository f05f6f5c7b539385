"""Install the ``mask2former`` package: ``pip install --no-build-isolation -e ".[dev]"``
(``--no-build-isolation`` builds the compiled ops against the installed torch)."""
import os
import subprocess
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.errors import BaseError, CCompilerError

CSRC = Path("mask2former") / "layers" / "csrc"


def _log(message: str) -> None:
    print(f"mask2former setup: {message}", flush=True)


def _extension_build():
    """``(ext_modules, cmdclass)`` for the compiled ops ``mask2former._C`` (multi-scale deformable
    attention, sources in ``mask2former/layers/csrc``).

    Built with ``torch.utils.cpp_extension`` against the torch importable at build time, hence
    ``pip install --no-build-isolation``: a CppExtension (CPU kernels), or a CUDAExtension adding
    the CUDA kernels when ``torch.cuda.is_available()`` and CUDA_HOME is found, or when
    ``FORCE_CUDA=1``. CUDA architectures come from ``TORCH_CUDA_ARCH_LIST`` (torch's default when
    unset); parallel compile jobs from ``MAX_JOBS``. Without torch, or when compiling fails (unless
    ``FORCE_CUDA=1``), the pure-Python package is installed and the PyTorch ops are used.
    """
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:
        _log(f"torch is not importable at build time ({exc}); installing the pure-Python package "
             "without compiled ops")
        return [], {}

    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    with_cuda = force_cuda or (torch.cuda.is_available() and CUDA_HOME is not None)
    sources = [str(CSRC / name) for name in (
        "ext.cpp", "ms_deform_attn_cpu.cpp", "ms_deform_attn_cpu_avx2.cpp", "ms_deform_attn_cpu_avx512.cpp",
        "resize_bilinear_cpu.cpp", "resize_bilinear_cpu_fma.cpp")]
    extra_compile_args = {"cxx": ["-O3"]}
    if with_cuda:
        _log(f"building mask2former._C with CUDA kernels (CUDA_HOME={CUDA_HOME})")
        extension = CUDAExtension(
            "mask2former._C",
            sources + [str(CSRC / "ms_deform_attn_cuda.cu")],
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={**extra_compile_args, "nvcc": ["-O3"]},
        )
    else:
        _log("building mask2former._C with CPU kernels only")
        extension = CppExtension("mask2former._C", sources, extra_compile_args=extra_compile_args)

    class BuildExtensionOrFallBack(BuildExtension):
        """BuildExtension that, unless FORCE_CUDA=1, reports a failed compile and goes on without
        the extension."""

        def run(self):
            try:
                super().run()
            except (BaseError, CCompilerError, OSError, RuntimeError, subprocess.CalledProcessError) as exc:
                if force_cuda:
                    raise
                _log(f"compiling mask2former._C failed ({exc}); installing the pure-Python package "
                     "without compiled ops")

    return [extension], {"build_ext": BuildExtensionOrFallBack}


EXT_MODULES, CMDCLASS = _extension_build()

setup(
    name="mask2former",
    version="0.1.0",
    description="Mask2Former: masked-attention mask transformer for universal image segmentation",
    packages=find_packages(exclude=("tests", "tests.*", "configs", "demo", "tools", "datasets")),
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "pycocotools>=2.0.6",
        "opencv-python-headless>=4.6",
        "scipy>=1.9",
        "numpy",
        "Pillow",
        "PyYAML",
        "tqdm",
        "tabulate",
        "termcolor",
        "tensorboard",
    ],
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
    extras_require={
        "dev": ["pytest>=7", "transformers>=4.38", "safetensors>=0.4", "huggingface_hub>=0.20",
                "cityscapesscripts", "onnx>=1.14", "onnxruntime>=1.16"],
        # ONNX export and the ONNX Runtime backend (tools/export_model.py, demo.py --exported).
        "export": ["onnx>=1.14", "onnxruntime>=1.16"],
        "detectron2": [],
        # Hugging Face checkpoints: save_pretrained directories and hf://ORG/NAME in MODEL.WEIGHTS.
        "hf": ["safetensors>=0.4", "huggingface_hub>=0.20"],
        # Cityscapes' official evaluation (semantic, instance, panoptic).
        "cityscapes": ["cityscapesscripts"],
    },
)
