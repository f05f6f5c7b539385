"""Registry of dataset mappers by ``INPUT.DATASET_MAPPER_NAME`` (names of the original configs:
``mask_former_semantic``, ``mask_former_panoptic``, ``mask_former_instance``,
``coco_instance_lsj``, ``coco_panoptic_lsj``)."""
from typing import Callable, Dict, List

__all__ = ["register_mapper", "get_mapper_class", "mapper_names", "build_dataset_mapper"]

_MAPPERS: Dict[str, type] = {}


def register_mapper(name: str) -> Callable[[type], type]:
    """Class decorator registering a mapper under ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def deco(cls: type) -> type:
        if name in _MAPPERS:
            raise ValueError(f"Dataset mapper '{name}' is already registered ({_MAPPERS[name]}).")
        _MAPPERS[name] = cls
        return cls

    return deco


def get_mapper_class(name: str) -> type:
    """The mapper class registered under ``name``.

    Raises:
        KeyError: unknown ``name`` (the message lists the registered ones).
    """
    if name not in _MAPPERS:
        raise KeyError(f"Unknown INPUT.DATASET_MAPPER_NAME '{name}'. Registered: {mapper_names()}")
    return _MAPPERS[name]


def mapper_names() -> List[str]:
    """Registered mapper names, sorted."""
    return sorted(_MAPPERS)


def build_dataset_mapper(cfg, is_train: bool = True):
    """Instantiate the mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME`` from ``cfg``."""
    return get_mapper_class(cfg.INPUT.DATASET_MAPPER_NAME)(cfg, is_train)
