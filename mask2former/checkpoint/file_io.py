"""Path manager for checkpoints: local files, http(s)/ftp URLs and the ``detectron2://`` namespace.

URLs are downloaded once by iopath's :class:`HTTPURLHandler` and cached under ``$FVCORE_CACHE``
(default ``~/.torch/iopath_cache``). ``detectron2://<name>`` is Detectron2's shorthand for
``https://dl.fbaipublicfiles.com/detectron2/<name>``, the host of its model zoo (ImageNet-pretrained
backbones such as ``detectron2://ImageNetPretrained/torchvision/R-50.pkl``).
"""

from iopath.common.file_io import HTTPURLHandler, PathHandler, PathManager as PathManagerBase

__all__ = [
    "PathManager",
    "Detectron2Handler",
    "DETECTRON2_PREFIX",
    "DETECTRON2_URL_PREFIX",
    "to_url",
]

DETECTRON2_PREFIX = "detectron2://"
DETECTRON2_URL_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"


def to_url(path: str) -> str:
    """Map ``detectron2://<name>`` to its https URL; return any other path unchanged."""
    if path.startswith(DETECTRON2_PREFIX):
        return DETECTRON2_URL_PREFIX + path[len(DETECTRON2_PREFIX) :]
    return path


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


PathManager = PathManagerBase()
PathManager.register_handler(HTTPURLHandler())
PathManager.register_handler(Detectron2Handler(PathManager))
