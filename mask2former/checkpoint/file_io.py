"""Path manager for checkpoints: local files, http(s)/ftp URLs, ``detectron2://`` and ``zoo://``.

URLs are downloaded once by iopath's :class:`HTTPURLHandler` and cached under ``$FVCORE_CACHE``
(default ``~/.torch/iopath_cache``), at :func:`url_cache_path`: the URL's path below the cache
directory, without the host. A file put there by hand is used without any network access; a failed
download raises an :class:`OSError` naming the URL and that path. ``detectron2://<name>`` is
Detectron2's shorthand for ``https://dl.fbaipublicfiles.com/detectron2/<name>``, the host of its
model zoo (ImageNet-pretrained backbones such as
``detectron2://ImageNetPretrained/torchvision/R-50.pkl``). ``zoo://<name>`` is the official
checkpoint of a Mask2Former model-zoo entry (``zoo://coco/panoptic/R50``, see ``MODEL_ZOO.md``).
"""

import os
from typing import Optional
from urllib.parse import urlparse

from iopath.common.file_io import HTTPURLHandler, PathHandler, PathManager as PathManagerBase
from iopath.common.file_io import get_cache_dir

__all__ = [
    "PathManager",
    "CachedURLHandler",
    "Detectron2Handler",
    "ZooHandler",
    "DETECTRON2_PREFIX",
    "DETECTRON2_URL_PREFIX",
    "ZOO_PREFIX",
    "to_url",
    "url_cache_path",
]

DETECTRON2_PREFIX = "detectron2://"
DETECTRON2_URL_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"
ZOO_PREFIX = "zoo://"


def to_url(path: str) -> str:
    """Map ``detectron2://<name>`` and ``zoo://<name>`` to their https URLs; return any other path
    unchanged.

    Raises:
        mask2former.model_zoo.UnknownModelError (a KeyError): ``zoo://<name>`` with an unknown name.
    """
    if path.startswith(DETECTRON2_PREFIX):
        return DETECTRON2_URL_PREFIX + path[len(DETECTRON2_PREFIX) :]
    if path.startswith(ZOO_PREFIX):
        from ..model_zoo import get_checkpoint_url  # the model zoo imports this module

        return get_checkpoint_url(path[len(ZOO_PREFIX) :])
    return path


def url_cache_path(url: str, cache_dir: Optional[str] = None) -> str:
    """Where iopath's :class:`HTTPURLHandler` caches ``url``: ``<cache dir>/<URL path>``.

    The cache directory is ``cache_dir``, else ``$FVCORE_CACHE``, else ``~/.torch/iopath_cache``
    (iopath's ``get_cache_dir``); the host is not part of the path. Holds for file names of up to
    ``HTTPURLHandler.MAX_FILENAME_LEN`` (250) characters; iopath renames longer ones at random.
    """
    relative = urlparse(url).path.lstrip("/")
    return os.path.join(get_cache_dir(cache_dir), os.path.dirname(relative), url.split("/")[-1])


class CachedURLHandler(HTTPURLHandler):
    """iopath's URL handler, reading the cache file of :func:`url_cache_path` whenever it exists
    (also when the cache directory changed since the last call) and naming that path when a
    download fails. ``force`` is accepted as iopath's handler does; a file already in the cache is
    never downloaded again, by either."""

    def _get_local_path(
        self, path: str, force: bool = False, cache_dir: Optional[str] = None, **kwargs
    ):
        cached = url_cache_path(path, cache_dir)
        if os.path.isfile(cached):
            return cached
        try:
            # force: skip iopath's in-memory map of earlier downloads, which may point to another
            # cache directory; the file itself is still downloaded only when it is missing.
            return super()._get_local_path(path, force=True, cache_dir=cache_dir, **kwargs)
        except OSError as e:
            raise OSError(
                f"{e}; without network access, download {path} elsewhere and put it at {cached}"
            ) from e


class Detectron2Handler(PathHandler):
    """Resolve ``detectron2://<name>`` through the https handler of ``path_manager``."""

    def __init__(self, path_manager: PathManagerBase):
        super().__init__()
        self._path_manager = path_manager

    def _get_supported_prefixes(self):
        return [DETECTRON2_PREFIX]

    def _get_local_path(self, path: str, **kwargs):
        return self._path_manager.get_local_path(to_url(path), **kwargs)

    def _open(self, path: str, mode: str = "r", **kwargs):
        return self._path_manager.open(to_url(path), mode, **kwargs)


class ZooHandler(Detectron2Handler):
    """Resolve ``zoo://<name>`` (a model-zoo name, e.g. ``zoo://coco/panoptic/R50``) to the official
    checkpoint URL, through the https handler of ``path_manager``."""

    def _get_supported_prefixes(self):
        return [ZOO_PREFIX]


PathManager = PathManagerBase()
PathManager.register_handler(CachedURLHandler())
PathManager.register_handler(Detectron2Handler(PathManager))
PathManager.register_handler(ZooHandler(PathManager))
