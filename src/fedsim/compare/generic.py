"""The comparison of an app fedsim does not know: every number both runs wrote, lined up.

Knowing nothing of the app, the only honest comparison is of everything: every site's
output files against the centralised run's files of the same name. Tables (CSV, TSV) are
lined up by column header and by a key where there is one (a ``row`` column, mapped through
the pooling offsets; or a first column of names such as ``term``), else by position; JSON
files by the path of each number. Whatever cannot be lined up is listed as skipped, with
the reason, instead of being dropped in silence: a comparison that compared nothing must
not read as a pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ABS_PREFIX = "max_abs_diff:"
REL_PREFIX = "max_rel_diff:"
DEFAULT_ABS = 1e-8
DEFAULT_REL = 1e-8
"""A number passes when ``|federated - centralised| <= abs + rel * |centralised|``
(numpy's ``isclose``); ``[compare.tolerances]`` sets either per file
(``max_abs_diff:<file>``) or per column (``max_abs_diff:<file>:<column>``; for JSON the
column is the number's path, ``a.b[0]``)."""

TABLES = {".csv": ",", ".tsv": "\t"}
ROW_KEY = "row"
"""The column by which apps number a site's input rows (``fedsim split`` keeps row order)."""


@dataclass(frozen=True)
class Skipped:
    file: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}


@dataclass(frozen=True)
class Worst:
    """The number furthest beyond (or least within) its allowed difference, and where."""

    site: str
    file: str
    row: str
    column: str
    federated: float
    centralised: float
    diff: float
    limit: float
    ratio: float

    def where(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "file": self.file,
            "row": self.row,
            "column": self.column,
            "federated": self.federated,
            "centralised": self.centralised,
        }


def _tolerance(tol: dict[str, float], prefix: str, file: str, column: str, default: float) -> float:
    return tol.get(f"{prefix}{file}:{column}", tol.get(f"{prefix}{file}", default))


def _worst(
    site: str, file: str, pairs: pd.DataFrame, tol: dict[str, float]
) -> tuple[Worst | None, int]:
    """``pairs``: one row per number, columns row, column, fed, central."""
    best: Worst | None = None
    for column, part in pairs.groupby("column", sort=False):
        fed = part["fed"].to_numpy(dtype=float)
        central = part["central"].to_numpy(dtype=float)
        both_nan = np.isnan(fed) & np.isnan(central)
        diff = np.where(both_nan, 0.0, np.abs(fed - central))
        diff = np.where(np.isnan(diff), np.inf, diff)
        limit = _tolerance(tol, ABS_PREFIX, file, str(column), DEFAULT_ABS) + _tolerance(
            tol, REL_PREFIX, file, str(column), DEFAULT_REL
        ) * np.abs(np.nan_to_num(central))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(diff == 0, 0.0, diff / limit)
        i = int(np.argmax(ratio))
        if (
            best is None
            or ratio[i] > best.ratio
            or (ratio[i] == best.ratio and diff[i] > best.diff)
        ):
            best = Worst(
                site, file, str(part["row"].iloc[i]), str(column), float(fed[i]),
                float(central[i]), float(diff[i]), float(limit[i]), float(ratio[i]),
            )  # fmt: skip
    return best, len(pairs)


def _key_column(frame: pd.DataFrame) -> str | None:
    if ROW_KEY in frame.columns:
        return ROW_KEY
    first = frame.columns[0]
    if str(first) == "" or str(first).startswith("Unnamed: "):
        return str(first)  # an index written by pandas
    if not pd.api.types.is_numeric_dtype(frame[first]) and frame[first].is_unique:
        return str(first)  # names: term, feature, column
    return None


def _row_offset(
    offsets: dict[str, dict[str, int]], site: str, rows: int, totals: dict[str, int]
) -> int:
    """Where the site's row 0 is in the pooled data: the pooled CSV whose share of this site
    has as many rows as the site's file (a file of predictions has one per input row). 0
    when none has: the file is not per input row (a model, say) and its keys are its own."""
    for name, per_site in offsets.items():
        if site not in per_site:
            continue
        start = per_site[site]
        later = [s for s in per_site.values() if s > start]
        if min(later, default=totals[name]) - start == rows:
            return start
    return 0


def _table_pairs(
    fed: pd.DataFrame, central: pd.DataFrame, site: str, rows_at: int
) -> tuple[pd.DataFrame | None, str | None]:
    """Numbers of the two tables lined up, or why they cannot be."""
    key = _key_column(fed)
    if key is not None and key in central.columns:
        if key == ROW_KEY or pd.api.types.is_integer_dtype(fed[key]):
            fed = fed.assign(**{key: fed[key] + rows_at})
        fed, central = fed.set_index(key), central.set_index(key)
        missing = fed.index.difference(central.index)
        if len(missing):
            return None, f"{len(missing)} of its {key} values not in the centralised file"
        if not fed.index.is_unique or not central.index.is_unique:
            return None, f"its key column {key!r} has repeated values"
        central = central.loc[fed.index]
    elif len(fed) != len(central):
        return None, (
            f"{len(fed)} rows at site {site}, {len(central)} in the centralised run, and no key "
            f"column (row, or a first column of names) to line them up"
        )
    else:
        central = central.set_axis(fed.index)
    columns = [
        c for c in fed.columns
        if c in central.columns
        and pd.api.types.is_numeric_dtype(fed[c]) and pd.api.types.is_numeric_dtype(central[c])
    ]  # fmt: skip
    if not columns:
        return None, "no numeric column in both runs' files"
    parts = [
        pd.DataFrame({"row": fed.index, "column": c, "fed": fed[c].to_numpy(),
                      "central": central[c].to_numpy()})
        for c in columns
    ]  # fmt: skip
    return pd.concat(parts, ignore_index=True), None


def _numbers(value: Any, path: str = "") -> dict[str, float]:
    """Every number in a JSON value by its path (``a.b[0]``); booleans are not numbers."""
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, item in value.items():
            out.update(_numbers(item, f"{path}.{key}" if path else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(_numbers(item, f"{path}[{i}]"))
        return out
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {path or "(value)": float(value)}
    return {}


def _json_pairs(fed_path: Path, central_path: Path) -> tuple[pd.DataFrame | None, str | None]:
    try:
        fed = _numbers(json.loads(fed_path.read_text(encoding="utf-8")))
        central = _numbers(json.loads(central_path.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not valid JSON ({exc})"
    paths = [p for p in fed if p in central]
    if not paths:
        return None, "no number at the same place in both runs' files"
    frame = pd.DataFrame(
        {"row": "", "column": paths, "fed": [fed[p] for p in paths],
         "central": [central[p] for p in paths]}
    )  # fmt: skip
    return frame, None


def _files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass(frozen=True)
class FileComparison:
    """Per file name, the worst number over every site that wrote it."""

    file: str
    worst: Worst
    numbers: int


def compare_outputs(
    federated: dict[str, Path],
    central: Path,
    offsets: dict[str, dict[str, int]],
    totals: dict[str, int],
    tol: dict[str, float],
) -> tuple[list[FileComparison], list[Skipped]]:
    """Every site's files against the centralised run's files of the same name."""
    central_files = _files(central)
    worst: dict[str, Worst] = {}
    counts: dict[str, int] = {}
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for site, folder in federated.items():
        for name, path in _files(folder).items():
            seen.add(name)
            other = central_files.get(name)
            if other is None:
                skipped.append(Skipped(name, f"written at site {site}, not by the centralised run"))
                continue
            suffix = Path(name).suffix.lower()
            if suffix in TABLES:
                try:
                    fed = pd.read_csv(path, sep=TABLES[suffix])
                    cen = pd.read_csv(other, sep=TABLES[suffix])
                except (ValueError, pd.errors.ParserError) as exc:
                    skipped.append(
                        Skipped(name, f"cannot be read as a table at site {site}: {exc}")
                    )
                    continue
                rows_at = _row_offset(offsets, site, len(fed), totals) if offsets else 0
                pairs, why = _table_pairs(fed, cen, site, rows_at)
            elif suffix == ".json":
                pairs, why = _json_pairs(path, other)
            else:
                skipped.append(Skipped(name, "not CSV, TSV or JSON: not compared"))
                continue
            if pairs is None:
                skipped.append(Skipped(name, f"at site {site}: {why}"))
                continue
            found, n = _worst(site, name, pairs, tol)
            counts[name] = counts.get(name, 0) + n
            if found is not None and (name not in worst or found.ratio > worst[name].ratio):
                worst[name] = found
    skipped += [
        Skipped(n, "written by the centralised run only") for n in central_files if n not in seen
    ]
    unique = list({(s.file, s.reason): s for s in skipped}.values())
    return [FileComparison(n, w, counts[n]) for n, w in worst.items()], unique
