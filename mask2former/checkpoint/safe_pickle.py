"""Reading model-zoo ``.pkl`` files without executing code.

``pickle.load`` calls whatever global a file names (``os.system`` included), so a downloaded
checkpoint could run code before its content is even looked at. Model-zoo files only hold dicts and
``OrderedDict`` s of numpy arrays, strings and numbers; :func:`load_pickle` resolves exactly those
globals and refuses every other one before anything from the file is called.

Set the environment variable ``MASK2FORMER_TRUST_PICKLE=1`` (or pass ``trusted=True``) to read a
file you trust with the full pickle protocol, e.g. a checkpoint that stores other Python objects.
"""
import codecs
import collections
import os
import pickle
from typing import IO, Any

import numpy as np

__all__ = ["load_pickle", "UnsafePickleError", "TRUST_PICKLE_ENV"]

TRUST_PICKLE_ENV = "MASK2FORMER_TRUST_PICKLE"

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray

# (module, name) -> object. numpy arrays pickle as ``multiarray._reconstruct`` + ``ndarray`` +
# ``dtype`` (module ``numpy.core`` before numpy 2, ``numpy._core`` since), numpy scalars as
# ``multiarray.scalar``; Python 3 writes bytes at protocol 2 as ``_codecs.encode(str, "latin1")``.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    **{
        (module, name): getattr(_multiarray, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    },
}


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle names a global that model-zoo checkpoints never contain.

    Attributes:
        global_name: ``"module.name"`` of the refused global.
    """

    def __init__(self, filename: str, global_name: str):
        super().__init__(
            f"Refusing to unpickle {filename}: it references {global_name!r}, which model-zoo "
            f"checkpoints never contain (only dicts, OrderedDicts, numpy arrays, str, numbers). "
            f"If you trust this file, set {TRUST_PICKLE_ENV}=1 to load it with full pickle"
        )
        self.global_name = global_name


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], filename: str):
        super().__init__(file, encoding="latin1")
        self._filename = filename

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(self._filename, f"{module}.{name}") from None


def trust_pickle_from_env() -> bool:
    """Whether ``MASK2FORMER_TRUST_PICKLE`` asks for the full pickle protocol ("1"/"true"/"yes")."""
    return os.environ.get(TRUST_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def load_pickle(file: IO[bytes], filename: str, *, trusted: bool = False) -> Any:
    """Unpickle a model-zoo checkpoint from the open binary ``file``.

    Args:
        file: binary file object positioned at the pickle.
        filename: the file's name, for error messages.
        trusted: use the full pickle protocol (also enabled by ``MASK2FORMER_TRUST_PICKLE=1``).

    Raises:
        UnsafePickleError: a global outside dicts / numpy arrays / str / numbers is referenced
            (nothing from the file has been called at that point).
        pickle.UnpicklingError, EOFError: the file is not a complete pickle.
    """
    if trusted or trust_pickle_from_env():
        return pickle.load(file, encoding="latin1")
    return _RestrictedUnpickler(file, filename).load()
