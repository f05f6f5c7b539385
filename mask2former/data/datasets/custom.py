"""Datasets of the user's own files: metadata read from the annotations, and registration by type.

Three dataset types (:data:`DATASET_TYPES`), each a name plus the paths it needs:

- ``coco_instances``: a COCO instances JSON and the image folder;
- ``coco_panoptic``: a COCO panoptic JSON, the folder of its PNGs and the image folder;
- ``sem_seg``: the image folder, the folder of label PNGs (uint8, pixel = class index
  0..K-1, 255 = ignore; same relative path as the image, extension ``.png``) and a class-list
  file (one class name per line, line i = class index i; blank lines are skipped).

Class names, the thing/stuff split and the id maps come from the annotations (JSON
``categories``; ``isthing`` for panoptic); colours from the categories' ``color`` when present,
generated otherwise. Every registered dataset carries ``evaluator_type`` (the evaluators used by
the engine) and ``dataset_type`` (the dataset mapper chosen for training, see
:mod:`mask2former.engine.custom_datasets`).
"""
import json
import os
from typing import Dict, List, Sequence, Tuple

from ...utils.visualizer import _palette_color
from ..catalog import DatasetCatalog, MetadataCatalog
from ._paths import require_file
from .coco import load_coco_json, register_coco_instances
from .coco_panoptic import register_coco_panoptic
from .sem_seg import load_sem_seg

__all__ = [
    "DATASET_TYPES",
    "coco_instances_metadata",
    "coco_panoptic_metadata",
    "sem_seg_metadata",
    "read_class_list",
    "register_sem_seg",
    "register_coco_panoptic_separated",
    "register_dataset",
    "num_classes_of",
]

#: dataset type -> the paths it takes, in order (names used in messages).
DATASET_TYPES: Dict[str, Tuple[str, ...]] = {
    "coco_instances": ("JSON", "IMAGE_ROOT"),
    "coco_panoptic": ("JSON", "PNG_ROOT", "IMAGE_ROOT"),
    "sem_seg": ("IMAGE_ROOT", "LABEL_ROOT", "CLASS_LIST"),
}

_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp")


def _layout(dataset_type: str) -> str:
    return f"--dataset NAME {dataset_type} {' '.join(DATASET_TYPES[dataset_type])}"


def _colors(categories: Sequence[dict]) -> List[Tuple[int, int, int]]:
    """RGB colour of each category: its ``color`` field, else a generated palette colour."""
    return [
        tuple(int(v) for v in c["color"]) if c.get("color") else _palette_color(i)
        for i, c in enumerate(categories)
    ]


def _read_categories(json_file: str, layout: str) -> List[dict]:
    """The ``categories`` of a COCO-format JSON, sorted by id.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is not JSON or has no ``categories`` list of ``{id, name}``.
    """
    require_file(json_file, layout)
    try:
        with open(json_file) as f:
            categories = json.load(f).get("categories")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"'{json_file}' is not a COCO-format JSON object: {e}") from e
    if not categories or not all("id" in c and "name" in c for c in categories):
        raise ValueError(
            f"'{json_file}' has no 'categories' list of {{'id', 'name', ...}} entries; "
            "class names are read from it."
        )
    return sorted(categories, key=lambda c: c["id"])


def coco_instances_metadata(json_file: str) -> dict:
    """Class metadata of a COCO instances JSON: ``thing_classes``, ``thing_colors`` and
    ``thing_dataset_id_to_contiguous_id`` (categories sorted by id -> 0..K-1).

    Raises:
        FileNotFoundError / ValueError: see :func:`_read_categories`.
    """
    categories = _read_categories(json_file, _layout("coco_instances"))
    return {
        "thing_classes": [c["name"] for c in categories],
        "thing_colors": _colors(categories),
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def coco_panoptic_metadata(panoptic_json: str) -> dict:
    """Class metadata of a COCO panoptic JSON, in Mask2Former's convention: all K categories
    (sorted by id) get contiguous ids 0..K-1; ``stuff_classes`` / ``stuff_colors`` list all K
    (the semantic classes), ``thing_classes`` / ``thing_colors`` the ``isthing`` ones;
    ``thing_dataset_id_to_contiguous_id`` maps the thing ids, ``stuff_dataset_id_to_contiguous_id``
    every id (as Mask2Former's ``coco_2017_*_panoptic_with_sem_seg``).

    Raises:
        FileNotFoundError / ValueError: see :func:`_read_categories`; ``ValueError`` also when a
            category has no ``isthing``.
    """
    categories = _read_categories(panoptic_json, _layout("coco_panoptic"))
    missing = [c["name"] for c in categories if "isthing" not in c]
    if missing:
        raise ValueError(
            f"Categories {missing} of '{panoptic_json}' have no 'isthing' (0 or 1); a COCO "
            "panoptic JSON marks each category as thing or stuff."
        )
    colors = _colors(categories)
    things = [i for i, c in enumerate(categories) if c["isthing"]]
    return {
        "thing_classes": [categories[i]["name"] for i in things],
        "thing_colors": [colors[i] for i in things],
        "stuff_classes": [c["name"] for c in categories],
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {categories[i]["id"]: i for i in things},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def read_class_list(path: str) -> List[str]:
    """Class names from a text file, one per line (line i = class index i); blank lines skipped.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: it lists no class, more than 255 (labels are uint8 with 255 = ignore), or a
            name twice.
    """
    require_file(path, _layout("sem_seg"))
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names or len(names) > 255:
        raise ValueError(
            f"Class-list file '{path}' lists {len(names)} classes; expected 1 to 255 names, one "
            "per line (line i = label value i)."
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Class-list file '{path}' lists {duplicates} more than once.")
    return names


def sem_seg_metadata(class_names: Sequence[str]) -> dict:
    """``stuff_classes`` and generated ``stuff_colors`` of a semantic dataset."""
    return {
        "stuff_classes": list(class_names),
        "stuff_colors": [_palette_color(i) for i in range(len(class_names))],
    }


def register_sem_seg(
    name: str, metadata: dict, image_root: str, sem_seg_root: str, ignore_label: int = 255
) -> None:
    """Register a semantic-segmentation dataset of image and label-PNG folders (lazy loading).

    Images (any of :data:`_IMAGE_EXTENSIONS`) are paired with ``<same relative path>.png`` under
    ``sem_seg_root``; labels are uint8 class indices, ``ignore_label`` = not evaluated.

    Metadata: ``image_root``, ``sem_seg_root``, ``evaluator_type="sem_seg"``, ``ignore_label``
    and ``metadata`` (at least ``stuff_classes``, e.g. from :func:`sem_seg_metadata`).
    """
    layout = _layout("sem_seg")
    DatasetCatalog.register(
        name, lambda: load_sem_seg(sem_seg_root, image_root, layout, image_ext=_IMAGE_EXTENSIONS)
    )
    MetadataCatalog.get(name).set(
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        evaluator_type="sem_seg",
        ignore_label=ignore_label,
        **metadata,
    )


def _merge_by_file_name(detection_dicts: List[dict], sem_seg_dicts: List[dict]) -> List[dict]:
    """Each detection dict updated with the semantic dict of the same ``file_name``.

    Raises:
        KeyError: an image has no label map.
    """
    by_file = {d["file_name"]: d for d in sem_seg_dicts}
    merged = []
    for record in detection_dicts:
        if record["file_name"] not in by_file:
            raise KeyError(f"No semantic label map for '{record['file_name']}'.")
        merged.append({**record, **by_file[record["file_name"]]})
    return merged


def register_coco_panoptic_separated(
    name: str,
    metadata: dict,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: str,
    instances_json: str,
) -> None:
    """Detectron2's "separated" COCO panoptic registration (the Panoptic FPN set-up): registers
    ``name + "_separated"`` (instance annotations of ``instances_json`` merged by file name with
    the label maps of ``sem_seg_root``, each with its own contiguous ids) and
    ``name + "_stuffonly"`` (the label maps alone). Both are lazy.

    Metadata of both: ``image_root``, ``sem_seg_root``, ``ignore_label=255`` and ``metadata``;
    ``_separated`` also ``panoptic_root``, ``panoptic_json``, ``json_file`` and
    ``evaluator_type="coco_panoptic_seg"``, ``_stuffonly`` ``evaluator_type="sem_seg"``.
    """
    layout = "image root, panoptic PNG root, panoptic JSON, semantic PNG root, instances JSON"
    panoptic_name = name + "_separated"
    DatasetCatalog.register(
        panoptic_name,
        lambda: _merge_by_file_name(
            load_coco_json(instances_json, image_root, panoptic_name, layout=layout),
            load_sem_seg(sem_seg_root, image_root, layout),
        ),
    )
    MetadataCatalog.get(panoptic_name).set(
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        **metadata,
    )
    semantic_name = name + "_stuffonly"
    DatasetCatalog.register(semantic_name, lambda: load_sem_seg(sem_seg_root, image_root, layout))
    MetadataCatalog.get(semantic_name).set(
        sem_seg_root=sem_seg_root,
        image_root=image_root,
        evaluator_type="sem_seg",
        ignore_label=255,
        **metadata,
    )


def register_dataset(name: str, dataset_type: str, paths: Sequence[str]) -> None:
    """Register ``name`` from the files of a :data:`DATASET_TYPES` entry, with its class
    metadata read now from the annotations (the image lists are read lazily).

    Raises:
        ValueError: unknown type, wrong number of paths, ``name`` already registered, or bad
            annotations (see the ``*_metadata`` functions).
        FileNotFoundError: a file or folder is missing.
    """
    if dataset_type not in DATASET_TYPES:
        raise ValueError(
            f"--dataset {name}: unknown TYPE '{dataset_type}'; expected one of "
            f"{sorted(DATASET_TYPES)}."
        )
    expected = DATASET_TYPES[dataset_type]
    if len(paths) != len(expected):
        raise ValueError(
            f"--dataset {name} {dataset_type} takes {len(expected)} paths "
            f"({' '.join(expected)}), got {len(paths)}: {list(paths)}."
        )
    if name in DatasetCatalog.list():
        raise ValueError(f"--dataset {name}: a dataset of that name is already registered.")
    paths = [os.path.abspath(os.path.expanduser(p)) for p in paths]
    for label, path in zip(expected, paths):
        is_file = label in ("JSON", "CLASS_LIST")
        if not (os.path.isfile(path) if is_file else os.path.isdir(path)):
            raise FileNotFoundError(
                f"--dataset {name} {dataset_type}: {label} '{path}' is not an existing "
                f"{'file' if is_file else 'folder'} (PATHs: {' '.join(expected)}; see "
                "datasets/README.md, 'Use your own dataset')."
            )
    if dataset_type == "coco_instances":
        json_file, image_root = paths
        register_coco_instances(
            name, coco_instances_metadata(json_file), json_file, image_root, _layout(dataset_type)
        )
    elif dataset_type == "coco_panoptic":
        panoptic_json, panoptic_root, image_root = paths
        register_coco_panoptic(
            name, coco_panoptic_metadata(panoptic_json), image_root, panoptic_root, panoptic_json
        )
    else:
        image_root, sem_seg_root, class_list = paths
        register_sem_seg(name, sem_seg_metadata(read_class_list(class_list)), image_root, sem_seg_root)
    MetadataCatalog.get(name).set(dataset_type=dataset_type)


_INSTANCE_EVALUATOR_TYPES = ("coco", "cityscapes_instance")


def num_classes_of(name: str) -> int:
    """Number of model classes a dataset needs (``MODEL.SEM_SEG_HEAD.NUM_CLASSES``): its
    ``thing_classes`` for instance datasets, its ``stuff_classes`` (all semantic classes)
    otherwise; 0 when its metadata lists no classes."""
    meta = MetadataCatalog.get(name)
    key = "thing_classes" if meta.get("evaluator_type") in _INSTANCE_EVALUATOR_TYPES else "stuff_classes"
    return len(meta.get(key) or [])
