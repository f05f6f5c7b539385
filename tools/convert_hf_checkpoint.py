#!/usr/bin/env python
"""Convert Mask2Former checkpoints between Hugging Face ``transformers`` and this project.

Hugging Face -> here (``SRC`` is a ``save_pretrained`` directory or ``hf://ORG/NAME``)::

    # a config that loads the checkpoint as it is (MODEL.WEIGHTS = SRC):
    python tools/convert_hf_checkpoint.py to-yaml \\
        hf://facebook/mask2former-swin-tiny-coco-instance -o swin_t.yaml
    # or a model-zoo .pkl plus its config (MODEL.WEIGHTS = the .pkl):
    python tools/convert_hf_checkpoint.py to-pkl DIR -o model.pkl --yaml model.yaml

Here -> Hugging Face (any weights our Checkpointer reads: .pkl, .pth, URL)::

    python tools/convert_hf_checkpoint.py to-hf --config-file configs/coco/panoptic/swin_T.yaml \\
        --weights model_final_9fd0ae.pkl -o mask2former-swin-t-coco-panoptic

The task (panoptic / instance / semantic: which outputs inference computes) is taken from
``--task``, else from the word in the source name (hub names end in ``-coco-panoptic``,
``-ade-semantic``, ...). Class names go into ``config.json``'s ``id2label`` from the metadata of
the config's ``DATASETS.TEST[0]`` (or ``--class-names FILE``, one name a line); back, they select a
built-in dataset or are registered when the weights load (see
:mod:`mask2former.checkpoint.hf_config`). Only Swin-backbone models convert.
"""
import argparse
import os
import pickle
import sys
import tempfile
from collections import OrderedDict
from typing import Callable, List, Optional

import yaml

from mask2former.checkpoint import Checkpointer
from mask2former.checkpoint.hf_config import (
    TASKS,
    cfg_dict_from_hf,
    hf_config_from_cfg,
    hf_metadata_name,
    hf_preprocessor_from_cfg,
    class_names as hf_class_names,
)
from mask2former.checkpoint.hf_directory import read_hf_directory, write_hf_directory
from mask2former.checkpoint.hf_format import hf_to_original


def _write_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def infer_task(source: str, task: Optional[str]) -> str:
    """``task``, else the one of :data:`TASKS` named in ``source``.

    Raises:
        ValueError: none or several are named and ``task`` is None.
    """
    if task:
        return task
    named = [t for t in TASKS if t in os.path.basename(source.rstrip("/")).lower()]
    if len(named) != 1:
        raise ValueError(f"Cannot tell the task from '{source}'; pass --task {{{','.join(TASKS)}}}")
    return named[0]


def write_yaml(cfg_dict: dict, path: str) -> None:
    """Write our config ``cfg_dict`` as YAML (atomically)."""
    text = yaml.safe_dump(cfg_dict, sort_keys=False)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _write_atomically(path, write)


def _cfg_dict(source: str, files, task: Optional[str], weights: str) -> dict:
    """Our config of the checkpoint ``source`` (``files`` = ``read_hf_directory(source)``)."""
    hf_config, preprocessor, _ = files
    cfg_dict = cfg_dict_from_hf(
        hf_config,
        task=infer_task(source, task),
        weights=weights,
        preprocessor=preprocessor,
        source=f"{source}/config.json",
    )
    dataset = cfg_dict["DATASETS"]["TEST"][0]
    if weights != source and dataset == hf_metadata_name(hf_class_names(hf_config)):
        print(
            f"note: the class names are not those of a built-in dataset; '{dataset}' gets them "
            f"when the weights load from {source}, not from {weights}",
            file=sys.stderr,
        )
    return cfg_dict


def hf_to_yaml(source: str, output: str, task: Optional[str]) -> None:
    """Write the config of the Hugging Face checkpoint ``source`` (``MODEL.WEIGHTS`` = ``source``)."""
    write_yaml(_cfg_dict(source, read_hf_directory(source), task, weights=source), output)


def hf_to_pkl(source: str, output: str, yaml_path: Optional[str], task: Optional[str]) -> None:
    """Write the Hugging Face checkpoint ``source`` as a model-zoo ``.pkl`` (and, with
    ``yaml_path``, its config with ``MODEL.WEIGHTS`` = ``output``). Both are checked before
    either is written."""
    files = read_hf_directory(source)
    cfg_dict = _cfg_dict(source, files, task, weights=output) if yaml_path else None
    state = hf_to_original(files[2], source=source)
    model = OrderedDict((k, v.detach().cpu().numpy()) for k, v in state.items())
    checkpoint = {"model": model, "__author__": f"Hugging Face transformers ({source})"}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(checkpoint, f)

    _write_atomically(output, write)
    if yaml_path:
        write_yaml(cfg_dict, yaml_path)


def _class_names(cfg, path: Optional[str]) -> List[str]:
    """Class names of the model of ``cfg``: ``path`` (one a line) or the test dataset's metadata."""
    count = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if path:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        if len(names) != count:
            raise ValueError(
                f"{path}: {len(names)} class names for MODEL.SEM_SEG_HEAD.NUM_CLASSES = {count}"
            )
        return names
    from mask2former.data import datasets  # noqa: F401  (registers the built-in names)
    from mask2former.data.catalog import MetadataCatalog

    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        meta = MetadataCatalog.get(name)
        for field in ("stuff_classes", "thing_classes"):
            if len(meta.get(field) or []) == count:
                return list(meta.get(field))
    raise ValueError(
        f"No dataset of DATASETS.TEST/TRAIN has {count} class names; pass --class-names FILE"
    )


def cfg_to_hf(
    config_file: str, weights: Optional[str], output: str, names_file: Optional[str], opts
) -> None:
    """Build our model of ``config_file``, load ``weights`` (strict) and write it as a Hugging
    Face directory ``output``."""
    import torch

    from mask2former.config import get_cfg
    from mask2former.modeling.build import build_model

    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts) + ["MODEL.DEVICE", "cpu"])
    names = _class_names(cfg, names_file)
    hf_config = hf_config_from_cfg(cfg, names, source=config_file)
    model = build_model(cfg).eval()
    Checkpointer(model).load(weights or cfg.MODEL.WEIGHTS, strict=True)
    with torch.no_grad():
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    write_hf_directory(output, state, hf_config, hf_preprocessor_from_cfg(cfg))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    to_yaml = sub.add_parser("to-yaml", help="config for a Hugging Face checkpoint")
    to_pkl = sub.add_parser("to-pkl", help="Hugging Face checkpoint -> model-zoo .pkl")
    for p in (to_yaml, to_pkl):
        p.add_argument("source", help="save_pretrained directory or hf://ORG/NAME[@REVISION]")
        p.add_argument("-o", "--output", required=True)
        p.add_argument("--task", choices=TASKS, help="default: the task named in the source")
    to_pkl.add_argument("--yaml", help="also write the config (MODEL.WEIGHTS = the .pkl)")
    to_hf = sub.add_parser("to-hf", help="our checkpoint -> Hugging Face directory")
    to_hf.add_argument("--config-file", required=True)
    to_hf.add_argument("--weights", help="default: the config's MODEL.WEIGHTS")
    to_hf.add_argument("-o", "--output", required=True, help="new directory")
    to_hf.add_argument("--class-names", help="file with one class name a line")
    to_hf.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    try:
        if args.command == "to-yaml":
            hf_to_yaml(args.source, args.output, args.task)
        elif args.command == "to-pkl":
            hf_to_pkl(args.source, args.output, args.yaml, args.task)
        else:
            cfg_to_hf(args.config_file, args.weights, args.output, args.class_names, args.opts)
    except (OSError, ValueError, ImportError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
