"""Panoptic Quality computed by official code (optional packages):

- ``panopticapi`` (COCO panoptic): on the package registry as ``panopticapi-lite`` (module
  ``panopticapi``); its ``numpy<2`` pin is wrong for current numpy, so install it with
  ``pip install --no-deps panopticapi-lite``.
- ``cityscapesscripts`` (``evalPanopticSemanticLabeling``, the Cityscapes benchmark's copy of
  the same computation): ``pip install cityscapesscripts``.

Both match segments image by image in one process per CPU (their ``pq_compute_multi_core``)
and average with their ``PQStat.pq_average``.
"""
import contextlib
import importlib
import importlib.util
import io
from typing import Optional

from .panoptic_quality import match_annotations, summarize

__all__ = ["PQ_IMPLEMENTATIONS", "pq_module_available", "pq_compute_official"]

#: PQ implementation name -> the module holding its ``pq_compute_multi_core`` (None: this project's).
PQ_IMPLEMENTATIONS = {
    "mask2former": None,
    "panopticapi": "panopticapi.evaluation",
    "cityscapesscripts": "cityscapesscripts.evaluation.evalPanopticSemanticLabeling",
}

_INSTALL = {
    "panopticapi": "pip install --no-deps panopticapi-lite",
    "cityscapesscripts": "pip install cityscapesscripts",
}


def pq_module_available(implementation: str) -> bool:
    """Whether the package of an official ``implementation`` is importable."""
    return importlib.util.find_spec(implementation) is not None


def pq_compute_official(
    implementation: str,
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: Optional[str] = None,
    pred_folder: Optional[str] = None,
) -> dict:
    """:func:`~.panoptic_quality.pq_compute`'s result (``All``/``Things``/``Stuff``,
    ``per_class``, ``stat``) with the matching and averages of the official ``implementation``
    ("panopticapi" or "cityscapesscripts"); their progress output is swallowed.

    Raises:
        ImportError: the package is not installed (the message says how to install it).
        FileNotFoundError / KeyError: as :func:`~.panoptic_quality.match_annotations`.
    """
    try:
        module = importlib.import_module(PQ_IMPLEMENTATIONS[implementation])
    except ImportError as e:
        raise ImportError(f"The {implementation} PQ needs {implementation}: {_INSTALL[implementation]}") from e
    categories, pairs, gt_folder, pred_folder = match_annotations(
        gt_json_file, pred_json_file, gt_folder, pred_folder
    )
    with contextlib.redirect_stdout(io.StringIO()):
        stat = module.pq_compute_multi_core(pairs, gt_folder, pred_folder, categories)
    return summarize(stat, categories)
