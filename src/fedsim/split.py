"""Cut one data set into the inputs of N simulated sites, reproducibly.

A federated result means little without the centralised result on the same rows, and a
benchmark means little if nobody can recreate its sites. So a split keeps the pooled data
beside the sites, writes a ``fedsim.toml`` that runs as is, and records in ``split.json``
the source's hash and every parameter that decided which row went where.

Strategies (all draw from ``numpy.random.default_rng(seed)`` only, so a seed fixes the split):

``iid``
    Shuffle, then deal the rows into N parts whose sizes differ by at most one.
``size-skew``
    Site sizes from Dirichlet(alpha * 1_N) (default alpha 1.0): every site first gets
    ``min_rows`` rows, the rest is shared by the drawn proportions (largest remainders get
    the rows left by rounding); rows are assigned at random.
``label-skew``
    The usual non-IID benchmark (Hsu et al., 2019): for each value of the label column,
    its rows are shuffled and cut across the sites by proportions drawn from
    Dirichlet(alpha * 1_N) (default alpha 0.5; smaller is more skewed). Small alphas leave
    some sites nearly empty, which no analysis can use, so afterwards every site with fewer
    than ``min_rows`` rows receives randomly chosen rows, one at a time, from the site that
    is then largest. That softens the skew slightly, and only where a site would be useless.

Each site's rows keep their order in the source file, so a site file reads as a subset of
the original rather than a shuffle of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomli_w

from fedsim.errors import ConfigError

STRATEGIES = ("iid", "label-skew", "size-skew")
DEFAULT_ALPHA = {"label-skew": 0.5, "size-skew": 1.0}
"""iid draws no proportions, so it has no alpha."""
MIN_ROWS = 5
"""A site with fewer rows cannot fit or even summarise much; skewed splits guarantee this."""
DATA_FILE = "data.csv"
TEST_FILE = "test.csv"
"""Held-out rows (``--test-fraction``): each site's own, and the same rows pooled for the
centralised run, so that both runs are scored on exactly the same rows."""
POOLED_DIR = "pooled"
APP_CONFIG_FILE = "config.yml"
RECORD_FILE = "split.json"
CONFIG_FILE = "fedsim.toml"
SPLIT_TIMEOUT = 900
SPLIT_STALL_TIMEOUT = 60
"""The written config's limits: a split is for trying an app out, and an app that hangs
should say so within a minute, not after the default hour."""
SITE_DIR_PATTERN = re.compile(r"^site-\d+$")


def site_name(k: int) -> str:
    """Site k (1-based); the names are valid hostnames, as fedsim requires."""
    return f"site-{k}"


def resolve_alpha(strategy: str, alpha: float | None) -> float | None:
    """The alpha a strategy uses: the one given, its default, or None for iid (ignored)."""
    if alpha is not None and not alpha > 0:
        raise ConfigError(f"--alpha must be greater than 0; got {alpha}")
    if strategy == "iid":
        return None
    return DEFAULT_ALPHA[strategy] if alpha is None else float(alpha)


def split_rows(
    frame: pd.DataFrame,
    n_sites: int,
    strategy: str,
    alpha: float | None = None,
    label: str | None = None,
    seed: int = 0,
    *,
    min_rows: int = MIN_ROWS,
) -> list[np.ndarray]:
    """The row positions (0-based, ascending) of each of ``n_sites`` sites.

    Every row of ``frame`` is in exactly one site. Raise ConfigError, naming the option,
    on any parameter the data cannot satisfy, before anything is written.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; use one of: {', '.join(STRATEGIES)}")
    n_rows = len(frame)
    if n_sites < 1:
        raise ConfigError(f"--sites must be at least 1; got {n_sites}")
    if n_sites > n_rows:
        raise ConfigError(f"--sites {n_sites} is more than the {n_rows} rows of the data")
    if min_rows < 1:
        raise ConfigError(f"--min-rows must be at least 1; got {min_rows}")
    alpha = resolve_alpha(strategy, alpha)
    if label is not None and label not in frame.columns:
        columns = ", ".join(map(str, frame.columns))
        raise ConfigError(f"--label: no column {label!r} in the data; its columns: {columns}")
    if strategy == "label-skew" and label is None:
        raise ConfigError("--strategy label-skew needs --label COLUMN (the column to skew)")
    if strategy != "iid" and n_rows < n_sites * min_rows:
        raise ConfigError(
            f"{n_rows} rows are too few for {n_sites} sites of at least {min_rows} rows each "
            f"({strategy}); use fewer --sites or a smaller --min-rows"
        )
    rng = np.random.default_rng(seed)
    if strategy == "iid":
        parts = np.array_split(rng.permutation(n_rows), n_sites)
    elif strategy == "size-skew":
        assert alpha is not None
        parts = _size_skew(rng, n_rows, n_sites, alpha, min_rows)
    else:
        assert alpha is not None and label is not None
        parts = _label_skew(rng, frame[label].to_numpy(), n_sites, alpha, min_rows)
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def hold_out(
    parts: list[np.ndarray], fraction: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per site, ``fraction`` of its rows as test rows (at least one, and at least one left
    to train on), each set in the data's order. Drawn from a generator of its own, so a
    split with test rows trains on a subset of the same sites' rows as one without."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--test-fraction must be between 0 and 1; got {fraction}")
    rng = np.random.default_rng([seed, 1])
    held: list[tuple[np.ndarray, np.ndarray]] = []
    for k, part in enumerate(parts, start=1):
        if len(part) < 2:
            raise ConfigError(
                f"--test-fraction: {site_name(k)} has {len(part)} row(s), too few to hold "
                f"any out; use fewer --sites or a larger --min-rows"
            )
        n_test = min(max(1, round(fraction * len(part))), len(part) - 1)
        test = np.sort(rng.choice(part, size=n_test, replace=False))
        held.append((np.setdiff1d(part, test), test))
    return held


def _dirichlet(rng: np.random.Generator, alpha: float, n_sites: int) -> np.ndarray:
    proportions = rng.dirichlet(np.full(n_sites, alpha))
    if not np.all(np.isfinite(proportions)) or proportions.sum() <= 0:
        raise ConfigError(f"--alpha {alpha} is too small to draw proportions from; use a larger")
    return proportions


def _size_skew(
    rng: np.random.Generator, n_rows: int, n_sites: int, alpha: float, min_rows: int
) -> list[np.ndarray]:
    proportions = _dirichlet(rng, alpha, n_sites)
    spare = n_rows - n_sites * min_rows
    shares = proportions * spare
    sizes = np.floor(shares).astype(np.int64)
    leftover = spare - int(sizes.sum())
    # the rows lost to rounding go to the largest fractional parts (stable: ties by site)
    sizes[np.argsort(-(shares - sizes), kind="stable")[:leftover]] += 1
    sizes += min_rows
    order = rng.permutation(n_rows)
    return np.split(order, np.cumsum(sizes)[:-1])


def _label_skew(
    rng: np.random.Generator, labels: np.ndarray, n_sites: int, alpha: float, min_rows: int
) -> list[np.ndarray]:
    parts: list[list[int]] = [[] for _ in range(n_sites)]
    # factorize numbers the values in order of first appearance (fixed by the file; sorting
    # mixed types could fail) and keeps a missing value as a value of its own, so no row
    # is dropped and the draws depend only on the data and the seed
    codes, values = pd.factorize(labels, use_na_sentinel=False)
    for code in range(len(values)):
        rows = rng.permutation(np.flatnonzero(codes == code))
        cuts = (np.cumsum(_dirichlet(rng, alpha, n_sites))[:-1] * len(rows)).astype(np.int64)
        for k, chunk in enumerate(np.split(rows, cuts)):
            parts[k].extend(chunk.tolist())
    for k in range(n_sites):
        while len(parts[k]) < min_rows:
            donor = max(range(n_sites), key=lambda j: len(parts[j]))
            parts[k].append(parts[donor].pop(int(rng.integers(len(parts[donor])))))
    return [np.asarray(part, dtype=np.int64) for part in parts]


def label_counts(frame: pd.DataFrame, rows: np.ndarray, label: str) -> dict[str, int]:
    """How many rows of each label value a site holds: every value of the whole column, in
    order of first appearance, zeros included (a missing class is the point of label-skew);
    values as text, for JSON."""
    codes, values = pd.factorize(frame[label].to_numpy(), use_na_sentinel=False)
    counts = np.bincount(codes[rows], minlength=len(values))
    return {str(value): int(count) for value, count in zip(values, counts, strict=True)}


def read_data(path: Path, sep: str = ",") -> pd.DataFrame:
    """The source as text, so that every value is written back exactly as it was read
    (no float reformatting, no NA guessing): the sites and the pooled file hold the
    same values as the source."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such data file")
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable CSV file (--sep {sep!r}): {exc}") from exc


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_app(app: Path) -> Path:
    """Checked now, so a typo fails here and not at the first ``fedsim run``."""
    path = app.expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"--app: no such app directory: {path}")
    missing = [f for f in ("main.py", "requirements.txt") if not (path / f).is_file()]
    if missing:
        raise ConfigError(
            f"--app: {path} is not a FeatureCloud app directory: no {', '.join(missing)}"
        )
    return path


def _app_reference(app: Path, out: Path) -> str:
    """Relative to the config's folder when the two share a folder below the root, so the
    split can move with its app (a repository, say); absolute otherwise."""
    common = Path(os.path.commonpath([app, out]))
    if common == Path(common.anchor):
        return app.as_posix()
    return Path(os.path.relpath(app, out)).as_posix()


def _prepare_out(out: Path, force: bool) -> None:
    """Refuse to mix a split with other files unless --force; with --force, take away only
    what an earlier split wrote there (its site and pooled data), never anything else."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"--out {out} exists and is not empty; use --force to replace it")
        stale_config = False
        record = out / RECORD_FILE
        if record.is_file():
            try:
                stale_config = bool(json.loads(record.read_text()).get("app_config"))
            except (json.JSONDecodeError, AttributeError):
                stale_config = False
        for child in out.iterdir():
            if child.is_dir() and (SITE_DIR_PATTERN.match(child.name) or child.name == POOLED_DIR):
                (child / DATA_FILE).unlink(missing_ok=True)
                (child / TEST_FILE).unlink(missing_ok=True)
                if not any(child.iterdir()):
                    child.rmdir()
        if stale_config:
            (out / APP_CONFIG_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class SplitResult:
    """What was written, for the caller to report."""

    config: Path
    rows: dict[str, int]
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    test_rows: dict[str, int] = field(default_factory=dict)
    """Held-out rows per site (``--test-fraction``); empty without."""


def _default_name(source: Path, strategy: str) -> str:
    """A run name the config accepts (``SITE_NAME_PATTERN``): ``wine_quality.csv`` split by
    iid gives ``wine-quality-iid``, never a name ``fedsim validate`` would then refuse."""
    name = re.sub(r"[^A-Za-z0-9-]+", "-", f"{source.stem}-{strategy}").strip("-")
    return name[:63].rstrip("-") or strategy


def write_split(
    source: Path,
    out: Path,
    n_sites: int,
    strategy: str,
    app: Path,
    *,
    alpha: float | None = None,
    label: str | None = None,
    seed: int = 0,
    app_config: Path | None = None,
    sep: str = ",",
    force: bool = False,
    name: str | None = None,
    min_rows: int = MIN_ROWS,
    test_fraction: float | None = None,
) -> SplitResult:
    """Split ``source`` and write the sites, the pooled data, ``fedsim.toml`` and
    ``split.json`` under ``out``.

    Everything is checked before the first file is written, so a mistake leaves ``out``
    as it was. Site files use the source's separator, so an app config that reads the
    source reads them too.
    """
    source = source.expanduser()
    frame = read_data(source, sep)
    parts = split_rows(frame, n_sites, strategy, alpha, label, seed, min_rows=min_rows)
    if test_fraction is not None:
        parts, tests = map(list, zip(*hold_out(parts, test_fraction, seed), strict=True))
    else:
        tests = []
    app_path = _check_app(app)
    app_config_text: bytes | None = None
    if app_config is not None:
        if not app_config.is_file():
            raise ConfigError(f"--app-config: no such file: {app_config}")
        app_config_text = app_config.read_bytes()  # read now: --force may replace its folder
    digest = sha256_of(source)
    out = out.expanduser().resolve()
    _prepare_out(out, force)

    names = [site_name(k) for k in range(1, n_sites + 1)]
    for site, rows in zip(names, parts, strict=True):
        (out / site).mkdir(exist_ok=True)
        frame.iloc[rows].to_csv(out / site / DATA_FILE, sep=sep, index=False)
    for site, rows in zip(names, tests, strict=False):
        frame.iloc[rows].to_csv(out / site / TEST_FILE, sep=sep, index=False)
    (out / POOLED_DIR).mkdir(exist_ok=True)
    if tests:
        frame.iloc[np.sort(np.concatenate(parts))].to_csv(
            out / POOLED_DIR / DATA_FILE, sep=sep, index=False
        )
        frame.iloc[np.sort(np.concatenate(tests))].to_csv(
            out / POOLED_DIR / TEST_FILE, sep=sep, index=False
        )
    else:
        frame.to_csv(out / POOLED_DIR / DATA_FILE, sep=sep, index=False)
    if app_config_text is not None:
        (out / APP_CONFIG_FILE).write_bytes(app_config_text)

    extra = [APP_CONFIG_FILE] if app_config is not None else []
    config: dict[str, Any] = {
        "name": name or _default_name(source, strategy),
        "app": _app_reference(app_path, out),
        "seed": seed,
        "shorten_waits": True,
        "timeout": SPLIT_TIMEOUT,
        "stall_timeout": SPLIT_STALL_TIMEOUT,
        "sites": [
            {"name": site, **({"coordinator": True} if k == 0 else {}), "inputs": [site, *extra]}
            for k, site in enumerate(names)
        ],
    }
    config_path = out / CONFIG_FILE
    header = (
        f"# Written by `fedsim split` ({strategy}, seed {seed}); how: {RECORD_FILE}.\n"
        f"# The centralised run's data: {POOLED_DIR}/{DATA_FILE}.\n"
        f"# timeout and stall_timeout in seconds: raise them for a slow app or a big data set.\n"
    )
    config_path.write_text(header + tomli_w.dumps(config), encoding="utf-8")

    rows = {site: len(part) for site, part in zip(names, parts, strict=True)}
    test_rows = {site: len(part) for site, part in zip(names, tests, strict=False)}
    counts = (
        {site: label_counts(frame, part, label) for site, part in zip(names, parts, strict=True)}
        if label is not None
        else {}
    )
    record: dict[str, Any] = {
        "source": str(source.resolve()),
        "sha256": digest,
        "rows": len(frame),
        "sep": sep,
        "strategy": strategy,
        "alpha": resolve_alpha(strategy, alpha),
        "label": label,
        "seed": seed,
        "min_rows": min_rows,
        "test_fraction": test_fraction,
        "app_config": str(app_config.resolve()) if app_config is not None else None,
        "sites": {
            site: {
                "rows": rows[site],
                **({"test_rows": test_rows[site]} if tests else {}),
                **({"label_counts": counts[site]} if counts else {}),
            }
            for site in names
        },
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return SplitResult(config=config_path, rows=rows, label_counts=counts, test_rows=test_rows)


def label_values(counts: dict[str, dict[str, int]]) -> Sequence[str]:
    """The label values, for a table's columns (every site lists all of them)."""
    return list(next(iter(counts.values()), {}))
