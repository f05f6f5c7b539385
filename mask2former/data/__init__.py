"""Datasets, catalogs, mappers and loaders; importing it registers the built-in datasets."""
from . import datasets  # noqa: F401
from .catalog import DatasetCatalog, MetadataCatalog
from .image_io import read_image

__all__ = ["DatasetCatalog", "MetadataCatalog", "read_image"]
