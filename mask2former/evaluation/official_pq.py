"""Panoptic Quality computed by the official COCO panoptic code (``panopticapi``, optional).

``panopticapi`` is on the package registry as ``panopticapi-lite`` (module ``panopticapi``); its
``numpy<2`` pin is wrong for current numpy, so install it with
``pip install --no-deps panopticapi-lite``.
"""
import contextlib
import importlib.util
import io
from typing import Optional

from .panoptic_quality import match_annotations, summarize

__all__ = ["PQ_IMPLEMENTATIONS", "panopticapi_available", "pq_compute_panopticapi"]

#: names of the PQ implementations :class:`~.panoptic_evaluation.COCOPanopticEvaluator` can run.
PQ_IMPLEMENTATIONS = ("mask2former", "panopticapi")


def panopticapi_available() -> bool:
    """Whether the ``panopticapi`` module is importable."""
    return importlib.util.find_spec("panopticapi") is not None


def pq_compute_panopticapi(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: Optional[str] = None,
    pred_folder: Optional[str] = None,
) -> dict:
    """:func:`~.panoptic_quality.pq_compute`'s result, with the per-image matching and the
    averages of ``panopticapi.evaluation`` (``pq_compute_multi_core``: one process per CPU;
    its progress output is swallowed).

    Raises:
        ImportError: panopticapi is not installed (the message says how to install it).
        FileNotFoundError / KeyError: as :func:`~.panoptic_quality.match_annotations`.
    """
    try:
        from panopticapi.evaluation import pq_compute_multi_core
    except ImportError as e:
        raise ImportError(
            "The panopticapi PQ needs panopticapi: pip install --no-deps panopticapi-lite"
        ) from e
    categories, pairs, gt_folder, pred_folder = match_annotations(
        gt_json_file, pred_json_file, gt_folder, pred_folder
    )
    with contextlib.redirect_stdout(io.StringIO()):
        stat = pq_compute_multi_core(pairs, gt_folder, pred_folder, categories)
    return summarize(stat, categories)
