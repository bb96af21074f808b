"""Command line: ``python -m fastxent {bench,info}`` (see :mod:`fastxent._cli`)."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
