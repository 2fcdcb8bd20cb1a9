"""``fedsim split DATA.csv``: one data set into N sites, a ready config, and the pooled data."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class Strategy(StrEnum):
    """Kept here (not imported from fedsim.split) so that ``fedsim --help`` does not load
    numpy and pandas; a test checks it matches ``fedsim.split.STRATEGIES``."""

    IID = "iid"
    LABEL_SKEW = "label-skew"
    SIZE_SKEW = "size-skew"


MAX_LABEL_COLUMNS = 10
"""A label with many values (a mistaken numeric column, say) would make the table unreadable;
all counts are in split.json anyway."""


def split(
    data: Annotated[Path, typer.Argument(help="The CSV file to split.", show_default=False)],
    sites: Annotated[int, typer.Option("--sites", help="How many sites.", show_default=False)],
    strategy: Annotated[
        Strategy, typer.Option(help="iid, label-skew (needs --label) or size-skew.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="The folder to write (empty or new).", show_default=False)
    ],
    app: Annotated[
        Path, typer.Option("--app", help="The FeatureCloud app directory the config runs.")
    ],
    alpha: Annotated[
        float | None,
        typer.Option(
            help="Dirichlet concentration; smaller is more skewed "
            "(default 0.5 for label-skew, 1.0 for size-skew; iid ignores it)."
        ),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option(help="The label column: skewed by label-skew; counted per site always."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Fixes the split; written to fedsim.toml.")] = 0,
    app_config: Annotated[
        Path | None,
        typer.Option("--app-config", help="The app's config.yml: copied, and given to every site."),
    ] = None,
    sep: Annotated[
        str, typer.Option(help="The CSV separator (the sites' files use it too).")
    ] = ",",
    min_rows: Annotated[
        int, typer.Option(help="The fewest rows a site gets (size-skew and label-skew).")
    ] = 5,
    name: Annotated[
        str | None, typer.Option(help="The config's name (default: the file's stem-strategy).")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Write into a non-empty --out, replacing an earlier split.")
    ] = False,
    test_fraction: Annotated[
        float | None,
        typer.Option(
            "--test-fraction",
            help="Hold out this fraction of each site's rows as its test.csv (the centralised "
            "run gets the same rows pooled).",
        ),
    ] = None,
) -> None:
    """Split a CSV into N sites' inputs and a ready fedsim.toml; keep the pooled data for the
    centralised run. Prints the fedsim.toml's path last."""
    from rich.table import Table

    from fedsim.cli.output import stderr, stdout
    from fedsim.split import label_values, write_split

    result = write_split(
        data,
        out,
        sites,
        strategy.value,
        app,
        alpha=alpha,
        label=label,
        seed=seed,
        app_config=app_config,
        sep=sep,
        force=force,
        name=name,
        min_rows=min_rows,
        test_fraction=test_fraction,
    )

    table = Table(title=f"{strategy.value} split of {data.name}, seed {seed}")
    table.add_column("site")
    table.add_column("rows", justify="right")
    if result.test_rows:
        table.add_column("test rows", justify="right")
    values = label_values(result.label_counts)
    shown = values[:MAX_LABEL_COLUMNS]
    for value in shown:
        table.add_column(f"{label}={value}", justify="right")
    for site, rows in result.rows.items():
        counts = result.label_counts.get(site, {})
        held = [str(result.test_rows[site])] if result.test_rows else []
        table.add_row(site, str(rows), *held, *(str(counts.get(value, 0)) for value in shown))
    stderr.print(table)
    if len(values) > len(shown):
        stderr.print(f"({len(values) - len(shown)} more label values: see split.json)")
    stdout.print(str(result.config))


COMMANDS = {"split": split}
