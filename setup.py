"""Install the ``mask2former`` package: ``pip install -e .`` (add ``[dev]`` for the test tools)."""
from setuptools import find_packages, setup

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
    ],
    extras_require={
        "dev": ["pytest>=7"],
        "detectron2": [],
    },
)
