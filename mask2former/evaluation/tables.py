"""Plain-text tables of evaluation results (markdown "pipe" format, via ``tabulate``)."""
import itertools
from typing import Dict, Sequence, Tuple

from tabulate import tabulate

__all__ = ["create_small_table", "create_per_category_table"]


def create_small_table(metrics: Dict[str, float]) -> str:
    """One header row of metric names and one row of values (3 decimals).

    Args:
        metrics: metric name -> value.
    """
    names, values = zip(*metrics.items()) if metrics else ((), ())
    return tabulate(
        [values], headers=names, tablefmt="pipe", floatfmt=".3f", stralign="center", numalign="center"
    )


def create_per_category_table(
    rows: Sequence[Tuple], headers: Sequence[str], max_columns: int = 6
) -> str:
    """Per-category rows laid out side by side to keep the table short.

    Args:
        rows: one tuple per category, ``(name, value, ...)``, all of ``len(headers)``.
        headers: column names of one row, e.g. ``("category", "PQ", "SQ", "RQ")``.
        max_columns: at most this many table columns (rounded down to whole rows).

    Raises:
        ValueError: a row does not have ``len(headers)`` entries.
    """
    width = len(headers)
    for row in rows:
        if len(row) != width:
            raise ValueError(f"Row {row} has {len(row)} entries, headers {headers} have {width}.")
    per_line = max(1, min(max_columns // width, len(rows)))
    flat = list(itertools.chain.from_iterable(rows))
    lines = itertools.zip_longest(*[flat[i :: per_line * width] for i in range(per_line * width)])
    return tabulate(
        lines, headers=list(headers) * per_line, tablefmt="pipe", floatfmt=".3f", numalign="left"
    )
