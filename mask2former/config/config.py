"""Config node: a yacs/fvcore ``CfgNode`` with ``_BASE_`` inheritance and strict key checks.

Merging follows Detectron2's rules, with errors that say where a bad key came from:

- a YAML file may name one base file (or a list of them) under ``_BASE_``; a relative base path is
  resolved against the directory of the file that names it. Bases are merged first, in order, then
  the file itself, so a file overrides what it inherits.
- every key must already exist in the node being merged into (unless that node allows new keys);
  an unknown key raises ``KeyError("Unknown config key 'MODEL.FOO' in configs/x.yaml")``.
- a value must have the type of the value it replaces (``list`` and ``tuple`` convert into each
  other, nested levels included, and ``None`` is accepted on either side); otherwise
  ``ValueError`` naming key and source.
- string values (in files and in ``merge_from_list``) are read as Python literals when they parse
  as one, e.g. ``"(640, 640)"`` becomes a tuple and ``"0.5"`` a float.
- a merge either applies completely or, when it raises, leaves the node unchanged.
"""
import ast
import copy
import logging
import os
from collections.abc import Mapping
from typing import Any, List, Optional, Sequence, Tuple

import yaml
from fvcore.common.config import BASE_KEY
from fvcore.common.config import CfgNode as _FvcoreCfgNode
from iopath.common.file_io import g_pathmgr
from yacs.config import CfgNode as _YacsCfgNode

__all__ = ["CfgNode", "add_missing_keys", "config_source"]

logger = logging.getLogger(__name__)

_OVERRIDES_SOURCE = "the override list"
_SOURCE_ATTR = "_config_file"


def config_source(cfg: _YacsCfgNode) -> str:
    """The YAML file last merged into ``cfg`` with :meth:`CfgNode.merge_from_file` (kept by
    ``clone()``), or ``"a config built in code"`` when there is none; for error messages."""
    return cfg.__dict__.get(_SOURCE_ATTR, "a config built in code")


class CfgNode(_FvcoreCfgNode):
    """Tree of config values (``cfg.MODEL.WEIGHTS``), loadable from YAML files and ``KEY VALUE``
    override lists. See the module docstring for the merge rules."""

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = True) -> None:
        """Merge a YAML file, after the files it inherits from through ``_BASE_``.

        Args:
            cfg_filename: path (or ``iopath`` URI) of the YAML file.
            allow_unsafe: whether Python-specific YAML tags (``!!python/object/apply:eval``, used by
                the original Mask2Former config files) may be evaluated. True by default, as in
                Detectron2: only load files you trust.

        Raises:
            FileNotFoundError: the file, or a base file it names, does not exist.
            KeyError: a key in a file does not exist in this node (the message names key and file).
            ValueError: a value has the wrong type, the file is not a YAML mapping, ``_BASE_``
                is malformed or circular, or the file's ``VERSION`` differs from this node's.
        """
        layers = _load_with_bases(str(cfg_filename), allow_unsafe, chain=())
        for source, mapping in layers:
            if "VERSION" in mapping and "VERSION" in self and mapping["VERSION"] != self.VERSION:
                raise ValueError(
                    f"{source} is a version-{mapping['VERSION']} config; this node holds "
                    f"version {self.VERSION} and configs are not upgraded automatically"
                )
        self._merge_layers(layers)
        self.__dict__[_SOURCE_ATTR] = str(cfg_filename)

    def merge_from_list(self, cfg_list: Sequence[Any]) -> None:
        """Merge ``[KEY1, VALUE1, KEY2, VALUE2, ...]``, e.g. trailing command-line overrides such as
        ``["MODEL.WEIGHTS", "model.pkl", "SOLVER.BASE_LR", "0.001"]``.

        Raises:
            ValueError: odd number of items, ``_BASE_`` used as a key, or a value of the wrong type.
            KeyError: a key does not exist in this node.
        """
        if len(cfg_list) % 2 != 0:
            raise ValueError(
                f"Config overrides must be KEY VALUE pairs; got {len(cfg_list)} items: {list(cfg_list)}"
            )
        updates: dict = {}
        for full_key, value in zip(cfg_list[0::2], cfg_list[1::2]):
            if full_key == BASE_KEY:
                raise ValueError(f"'{BASE_KEY}' can only be used in config files, not in overrides")
            *parents, leaf = str(full_key).split(".")
            target = updates
            for part in parents:
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    raise ValueError(f"Config override '{full_key}' conflicts with an earlier override")
            target[leaf] = value
        self._merge_layers([(_OVERRIDES_SOURCE, updates)])

    def merge_from_other_cfg(self, cfg_other: _YacsCfgNode) -> None:
        """Merge another config node; same rules (and errors) as :meth:`merge_from_file`."""
        if BASE_KEY in cfg_other:
            raise ValueError(f"'{BASE_KEY}' can only be used in config files")
        self._merge_layers([("the merged CfgNode", cfg_other)])

    def _merge_layers(self, layers: Sequence[Tuple[str, Mapping]]) -> None:
        if self.is_frozen():
            raise AttributeError("Cannot merge into a frozen CfgNode; call defrost() first")
        # Merge into a copy first so that an error leaves ``self`` untouched.
        staged = self.clone()
        for source, mapping in layers:
            _merge_mapping(staged, mapping, prefix="", source=source, root=staged)
        for source, mapping in layers:
            _merge_mapping(self, mapping, prefix="", source=source, root=self)


def add_missing_keys(cfg: _YacsCfgNode, defaults: _YacsCfgNode, prefix: str = "") -> None:
    """Copy into ``cfg`` every key of ``defaults`` that ``cfg`` lacks, recursively.

    Existing keys keep their values. New sub-nodes get ``type(cfg)``, so this works on a Detectron2
    ``CfgNode`` too.

    Raises:
        ValueError: ``defaults`` has a group of keys where ``cfg`` has a plain value.
        AttributeError: ``cfg`` is frozen and a key is missing.
    """
    for key, default in defaults.items():
        full_key = f"{prefix}{key}"
        if key not in cfg:
            value = copy.deepcopy(default)
            if isinstance(value, _YacsCfgNode):
                value = type(cfg)(value)
            setattr(cfg, key, value)
        elif isinstance(default, _YacsCfgNode):
            if not isinstance(cfg[key], _YacsCfgNode):
                raise ValueError(
                    f"Config key '{full_key}' holds the value {cfg[key]!r}, "
                    "but Mask2Former defines it as a group of keys"
                )
            add_missing_keys(cfg[key], default, prefix=f"{full_key}.")


def _load_with_bases(path: str, allow_unsafe: bool, chain: Tuple[str, ...]) -> List[Tuple[str, dict]]:
    """Read ``path`` and, recursively, its ``_BASE_`` files.

    Returns:
        ``[(file, mapping), ...]`` in merge order: bases first, ``path`` last, each mapping
        without its ``_BASE_`` entry.
    """
    if path in chain:
        raise ValueError(f"Circular _BASE_ inheritance: {' -> '.join(chain + (path,))}")
    mapping = _read_yaml(path, allow_unsafe, named_in=chain[-1] if chain else None)
    bases = mapping.pop(BASE_KEY, None)
    if bases is None:
        return [(path, mapping)]
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"'{BASE_KEY}' in {path} must be a path or a list of paths, got {bases!r}")
    layers: List[Tuple[str, dict]] = []
    for base in bases:
        layers.extend(_load_with_bases(_resolve_base(base, path), allow_unsafe, chain + (path,)))
    layers.append((path, mapping))
    return layers


def _resolve_base(base: str, including_file: str) -> str:
    """Absolute paths and URIs are kept; relative ones are relative to ``including_file``'s folder."""
    if base.startswith("~"):
        base = os.path.expanduser(base)
    if "://" in base:
        return base
    if os.path.isabs(base):
        return os.path.normpath(base)
    return os.path.normpath(os.path.join(os.path.dirname(including_file), base))


def _read_yaml(path: str, allow_unsafe: bool, named_in: Optional[str] = None) -> dict:
    """Parse one YAML file into a dict (an empty file gives ``{}``)."""
    try:
        with g_pathmgr.open(path, "r") as f:
            text = f.read()
    except FileNotFoundError:
        where = f" (named as {BASE_KEY} in {named_in})" if named_in else ""
        raise FileNotFoundError(f"Config file '{path}' does not exist{where}") from None
    try:
        try:
            loaded = yaml.safe_load(text)
        except yaml.constructor.ConstructorError:
            if not allow_unsafe:
                raise
            logger.warning(f"Loading config {path} with yaml.unsafe_load: only load trusted files.")
            loaded = yaml.unsafe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"Cannot parse config file {path}: {e}") from e
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"Config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
    return loaded


def _decode(value: Any) -> Any:
    """Read a string as a Python literal when it is one (``"(1, 2)"`` -> tuple); else keep it."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _merge_mapping(node: _YacsCfgNode, updates: Mapping, prefix: str, source: str, root) -> None:
    """Merge ``updates`` into ``node`` in place, checking keys and types (see module docstring)."""
    for key, raw in updates.items():
        full_key = f"{prefix}{key}"
        value = _decode(raw)
        if key not in node:
            if node.is_new_allowed():
                node[key] = type(node)(value) if isinstance(value, Mapping) else value
                continue
            if root.key_is_deprecated(full_key):
                logger.warning(f"Ignoring deprecated config key '{full_key}' in {source}")
                continue
            if root.key_is_renamed(full_key):
                root.raise_key_rename_error(full_key)
            raise KeyError(f"Unknown config key '{full_key}' in {source}")
        current = node[key]
        if isinstance(current, _YacsCfgNode):
            if not isinstance(value, Mapping):
                raise ValueError(
                    f"Config key '{full_key}' in {source} is a group of keys "
                    f"({', '.join(sorted(map(str, current)))}); got the value {value!r}"
                )
            _merge_mapping(current, value, f"{full_key}.", source, root)
        else:
            if isinstance(value, Mapping):
                raise ValueError(f"Config key '{full_key}' in {source} is a single value, not a group")
            node[key] = _coerce(value, current, full_key, source)


def _coerce(value: Any, current: Any, full_key: str, source: str) -> Any:
    """Return ``value`` converted to the type of ``current`` where that is allowed."""
    if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
        return _as_sequence_like(value, current)
    if type(value) is type(current) or value is None or current is None:
        return value
    raise ValueError(
        f"Type mismatch for config key '{full_key}' in {source}: expected "
        f"{type(current).__name__} (default {current!r}), got {type(value).__name__} {value!r}"
    )


def _as_sequence_like(value: Sequence, template: Sequence) -> Sequence:
    """``value`` with the list/tuple types of ``template``, nested levels included (YAML has no
    tuples, so a dumped ``((1, 2), (3, 4))`` comes back as lists)."""
    items = []
    for i, item in enumerate(value):
        like = template[min(i, len(template) - 1)] if template else None
        if isinstance(item, (list, tuple)) and isinstance(like, (list, tuple)):
            item = _as_sequence_like(item, like)
        items.append(item)
    return type(template)(items)
