"""``fedsim report``: one self-contained HTML file that shows a run.

record.py reads the run directory, charts.py draws its pictures, page.py lays out the
page. The file is written next to the run's other records unless told otherwise.
"""

from __future__ import annotations

from pathlib import Path

from fedsim.rundir import RunDir

REPORT = "report.html"


def write_report(run_dir: RunDir, dest: Path | None = None) -> Path:
    """Write the report of ``run_dir`` to ``dest`` (default: ``report.html`` in the run)."""
    from fedsim.report.page import render
    from fedsim.report.record import read_run

    dest = dest or run_dir.path / REPORT
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(render(read_run(run_dir)), encoding="utf-8")
    tmp.replace(dest)  # a browser left open on the report never reads half of it
    return dest


__all__ = ["REPORT", "write_report"]
