"""The one convention every table the toolkit writes follows, cell by cell.

Numbers are written at full precision (``repr``), so a table read back gives the same floats;
infinity is ``inf`` (e.g. a break-even point that is never reached); an empty cell means "not
applicable or not measured" (NaN, such as the spread of a single run, or None). Reading turns
an empty or unreadable number cell back into NaN.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Iterable, Mapping, Sequence


def csv_cell(value) -> str:
    """Full precision for numbers, 'inf' for never, empty for not applicable (NaN or None)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def csv_text(columns: Sequence[str], rows: Iterable[Mapping]) -> str:
    """A header and one line per row; a column a row lacks is written empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_cell(row.get(column)) for column in columns])
    return out.getvalue()


def float_cell(text: str | None) -> float:
    """A number cell read back: NaN for an empty, missing or unreadable one."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
