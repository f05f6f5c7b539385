#!/usr/bin/env python
"""Regenerate the tables of MODEL_ZOO.md from mask2former/model_zoo/catalog.py.

The hand-written introduction (everything up to the generated-section marker line) is kept; what
follows the marker is replaced by ``mask2former.model_zoo.markdown.render_tables()``. The file is
written to a temporary file beside it and renamed. ``--check`` writes nothing and exits with
status 1 when the file is out of date.

    python tools/model_zoo_md.py            # rewrite MODEL_ZOO.md
    python tools/model_zoo_md.py --check    # verify it (what tests/test_model_zoo.py does)
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

from mask2former.model_zoo.markdown import GENERATED_MARKER, render_tables

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "MODEL_ZOO.md"


def expected_text(current: str, path: Path) -> str:
    """``current`` with everything after the marker line replaced by the rendered tables.

    Raises:
        ValueError: ``current`` has no marker line.
    """
    head, marker, _ = current.partition(GENERATED_MARKER + "\n")
    if not marker:
        raise ValueError(f"{path}: no line {GENERATED_MARKER!r} marking the generated tables")
    return head + marker + "\n" + render_tables()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH, help="the MODEL_ZOO.md file")
    parser.add_argument("--check", action="store_true", help="only check that it is up to date")
    args = parser.parse_args()

    current = args.path.read_text()
    try:
        text = expected_text(current, args.path)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    if args.check:
        if text != current:
            print(f"{args.path} is out of date: run python tools/model_zoo_md.py", file=sys.stderr)
            return 1
        return 0
    fd, tmp = tempfile.mkstemp(dir=args.path.parent, prefix=f".{args.path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, args.path.stat().st_mode & 0o777)
    os.replace(tmp, args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
