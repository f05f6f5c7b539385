"""Logging set-up for command-line tools: console on rank 0, ``log.txt`` per rank in OUTPUT_DIR."""
import logging
import os
import sys
from typing import Optional


def setup_logger(output_dir: Optional[str] = None, rank: int = 0, name: str = "mask2former") -> logging.Logger:
    """Configure the ``name`` logger once: INFO to stdout on rank 0, DEBUG to
    ``<output_dir>/log.txt`` (``log.txt.rank<N>`` on other ranks)."""
    logger = logging.getLogger(name)
    if getattr(logger, "_mask2former_configured", False):
        return logger
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    formatter = logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setLevel(logging.INFO)
        console.setFormatter(formatter)
        logger.addHandler(console)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        file_name = os.path.join(output_dir, "log.txt" if rank == 0 else f"log.txt.rank{rank}")
        file_handler = logging.FileHandler(file_name)
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    logger._mask2former_configured = True
    return logger
