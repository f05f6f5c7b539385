"""The user's own datasets, named on the command line (``--dataset NAME TYPE PATH [PATH ...]``)
or in YAML files listed in the config (``DATASETS.DEFINITION_FILES``).

:class:`DatasetArgumentParser` (the parser of ``train_net.py``, ``demo/demo.py`` and
``tools/benchmark.py``) has the repeatable option; :func:`register_datasets` registers the named
datasets (in every process, as part of the set-up, before the config is used); then
:func:`configure_datasets` registers the config's definition files, picks the dataset mapper
and the evaluated outputs that suit the dataset types (:func:`adapt_config_to_datasets`) and
compares ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` with the classes of every dataset of
``DATASETS.TRAIN`` / ``DATASETS.TEST`` (:func:`check_num_classes`).

A definition file maps names to a type and its paths (relative paths are read from the file's
folder)::

    mine_train:
      type: coco_instances
      paths: [annotations/train.json, images/train]
"""
import argparse
import logging
import os
from typing import List, Sequence

import yaml

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..data.datasets.custom import DATASET_TYPES, num_classes_of, register_dataset

__all__ = [
    "DatasetArgumentParser",
    "register_datasets",
    "read_definition_file",
    "configure_datasets",
    "adapt_config_to_datasets",
    "check_num_classes",
    "MAPPERS_BY_TYPE",
]

logger = logging.getLogger(__name__)

#: dataset type -> the dataset mappers that read its records (the first is used by default).
MAPPERS_BY_TYPE = {
    "coco_instances": ("coco_instance_lsj", "mask_former_instance"),
    "coco_panoptic": ("coco_panoptic_lsj", "mask_former_panoptic"),
    "sem_seg": ("mask_former_semantic",),
}

# dataset type -> the outputs (MODEL.MASK_FORMER.TEST.*_ON) its evaluators use; None: as configured.
_OUTPUTS_BY_TYPE = {
    "coco_instances": {"PANOPTIC_ON": False, "INSTANCE_ON": True, "SEMANTIC_ON": False},
    "coco_panoptic": None,
    "sem_seg": {"PANOPTIC_ON": False, "INSTANCE_ON": False, "SEMANTIC_ON": True},
}

_HELP = (
    "use your own dataset as NAME in DATASETS.TRAIN / DATASETS.TEST (repeatable). TYPE and "
    "PATHs: "
    + "; ".join(f"{t} {' '.join(p)}" for t, p in DATASET_TYPES.items())
    + ". Config overrides (KEY VALUE) may follow the paths."
)


class _DatasetAction(argparse.Action):
    """Appends ``[NAME, TYPE, PATH, ...]`` (as many paths as TYPE takes) to ``dest``; the values
    after them are config overrides, kept for :meth:`DatasetArgumentParser.parse_known_args`."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) < 2 or values[1] not in DATASET_TYPES:
            parser.error(
                f"{option_string} {' '.join(values)}: expected NAME TYPE PATH..., TYPE one of "
                f"{sorted(DATASET_TYPES)}"
            )
        size = 2 + len(DATASET_TYPES[values[1]])
        if len(values) < size:
            parser.error(
                f"{option_string} {' '.join(values)}: {values[1]} takes the paths "
                f"{' '.join(DATASET_TYPES[values[1]])}"
            )
        specs = list(getattr(namespace, self.dest) or [])
        setattr(namespace, self.dest, specs + [values[:size]])
        overflow = list(getattr(namespace, "_dataset_overflow", []))
        setattr(namespace, "_dataset_overflow", overflow + values[size:])


class DatasetArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with the repeatable ``--dataset NAME TYPE PATH [PATH ...]`` option
    (``args.datasets``: list of ``[NAME, TYPE, PATH, ...]``).

    Values given after a ``--dataset``'s paths are prepended to ``args.opts`` (the trailing
    config overrides), so ``--dataset mine sem_seg IMG LBL CLS DATASETS.TRAIN '("mine",)'``
    reads as intended.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--dataset",
            dest="datasets",
            nargs="+",
            action=_DatasetAction,
            default=[],
            metavar=("NAME TYPE PATH", "PATH"),
            help=_HELP,
        )

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        overflow = namespace.__dict__.pop("_dataset_overflow", [])
        if overflow:
            if not hasattr(namespace, "opts"):
                self.error(f"unrecognized arguments after --dataset: {' '.join(overflow)}")
            namespace.opts = overflow + list(namespace.opts or [])
        return namespace, extras


def register_datasets(specs: Sequence[Sequence[str]]) -> None:
    """Register every ``[NAME, TYPE, PATH, ...]`` of ``specs`` (see
    :func:`mask2former.data.datasets.custom.register_dataset`). A name already registered by
    an earlier call with the same type and paths is skipped (set-up run twice in one process).

    Raises:
        ValueError: a name is registered already with other files, or bad annotations.
        FileNotFoundError: a file or folder is missing.
    """
    for name, dataset_type, *paths in specs:
        meta = MetadataCatalog.get(name) if name in DatasetCatalog.list() else None
        if meta is not None and meta.get("dataset_spec") == [dataset_type, *paths]:
            continue
        register_dataset(name, dataset_type, paths)
        MetadataCatalog.get(name).set(dataset_spec=[dataset_type, *paths])


def read_definition_file(path: str) -> List[List[str]]:
    """``[NAME, TYPE, PATH, ...]`` specs of a dataset definition file (see the module docstring);
    relative paths are joined to the file's folder.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: it is not YAML, or an entry lacks ``type`` / ``paths``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Dataset definition file '{path}' (DATASETS.DEFINITION_FILES) not found.")
    try:
        with open(path) as f:
            entries = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ValueError(f"Dataset definition file '{path}' is not valid YAML: {e}") from e
    if not isinstance(entries, dict):
        raise ValueError(f"Dataset definition file '{path}' must map dataset names to {{type, paths}}.")
    folder = os.path.dirname(os.path.abspath(path))
    specs = []
    for name, entry in entries.items():
        if not isinstance(entry, dict) or "type" not in entry or not isinstance(entry.get("paths"), list):
            raise ValueError(
                f"Dataset '{name}' in '{path}' needs 'type' (one of {sorted(DATASET_TYPES)}) and a "
                f"'paths' list; got {entry!r}."
            )
        paths = [os.path.join(folder, os.path.expanduser(str(p))) for p in entry["paths"]]
        specs.append([str(name), str(entry["type"]), *paths])
    return specs


def configure_datasets(cfg) -> List[str]:
    """Set-up of an unfrozen ``cfg`` for its datasets: register the datasets of
    ``DATASETS.DEFINITION_FILES``, then :func:`adapt_config_to_datasets` and
    :func:`check_num_classes`.

    Returns:
        The config changes, one line each, for the log.

    Raises:
        ValueError / FileNotFoundError: bad definition files or dataset files, or a class-count
            mismatch.
    """
    for path in cfg.DATASETS.DEFINITION_FILES:
        register_datasets(read_definition_file(path))
    changes = adapt_config_to_datasets(cfg)
    check_num_classes(cfg)
    return changes


def adapt_config_to_datasets(cfg) -> List[str]:
    """Make the (unfrozen) ``cfg`` fit the types of its custom datasets (those with metadata
    ``dataset_type``): ``INPUT.DATASET_MAPPER_NAME`` becomes the type's default mapper when the
    configured one cannot read ``DATASETS.TRAIN[0]``'s records (:data:`MAPPERS_BY_TYPE`), and
    the evaluated outputs ``MODEL.MASK_FORMER.TEST.*_ON`` those of ``DATASETS.TEST[0]``'s type
    (instance datasets: instances only; semantic: semantic only; panoptic: as configured).

    Returns:
        One line per changed key, for the log.
    """
    changes = []
    train_type = _dataset_type(cfg.DATASETS.TRAIN)
    if train_type is not None and cfg.INPUT.DATASET_MAPPER_NAME not in MAPPERS_BY_TYPE[train_type]:
        new = MAPPERS_BY_TYPE[train_type][0]
        changes.append(
            f"INPUT.DATASET_MAPPER_NAME {cfg.INPUT.DATASET_MAPPER_NAME} -> {new} "
            f"({cfg.DATASETS.TRAIN[0]} is a {train_type} dataset)"
        )
        cfg.INPUT.DATASET_MAPPER_NAME = new
    test_type = _dataset_type(cfg.DATASETS.TEST) or train_type
    outputs = _OUTPUTS_BY_TYPE[test_type] if test_type is not None else None
    for key, value in (outputs or {}).items():
        if cfg.MODEL.MASK_FORMER.TEST[key] != value:
            changes.append(f"MODEL.MASK_FORMER.TEST.{key} {cfg.MODEL.MASK_FORMER.TEST[key]} -> {value} "
                           f"({test_type} dataset)")
            cfg.MODEL.MASK_FORMER.TEST[key] = value
    return changes


def _dataset_type(names: Sequence[str]):
    if not len(names) or names[0] not in DatasetCatalog.list():
        return None
    return MetadataCatalog.get(names[0]).get("dataset_type")


def check_num_classes(cfg) -> None:
    """Check ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` against the classes of every dataset of
    ``DATASETS.TRAIN`` and ``DATASETS.TEST`` whose metadata lists them (see
    :func:`mask2former.data.datasets.custom.num_classes_of`).

    Raises:
        ValueError: naming the key, the dataset and both numbers.
    """
    configured = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    for name in dict.fromkeys(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)):
        if name not in DatasetCatalog.list():
            continue
        needed = num_classes_of(name)
        if needed and needed != configured:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {configured} but dataset '{name}' has "
                f"{needed} classes; set MODEL.SEM_SEG_HEAD.NUM_CLASSES {needed} (a checkpoint "
                "trained with another number of classes still loads: its class head is "
                "re-initialised)."
            )
