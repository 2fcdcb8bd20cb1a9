"""The live progress display: a table redrawn in place on a real terminal (a pseudo-terminal
read back through a terminal emulator), plain lines when piped, and the timeline it keeps."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pyte
import pytest

from fedsim.errors import ExitCode
from tests.conftest import BEHAVE_APP, ROOT, fedsim, run_dir_of, write_run

EXAMPLE = ROOT / "examples" / "mean"
SITES = ("site-a", "site-b", "site-c")
COLUMNS, LINES = 150, 60
TABLE_HEADER = "app state"


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """The bundled three-site mean example, its runs kept under tmp_path."""
    shutil.copytree(EXAMPLE, tmp_path / "mean")
    config = tmp_path / "mean" / "fedsim.toml"
    text = config.read_text().replace('"../../apps/mean"', f'"{ROOT / "apps" / "mean"}"')
    config.write_text(f'output_dir = "{tmp_path / "runs"}"\n{text}')
    return config


def run_on_terminal(
    *args: str, interrupt_when: Callable[[bytes], bool] | None = None
) -> tuple[int, bytes]:
    """``fedsim ARGS`` with stdin, stdout and stderr on a pseudo-terminal of COLUMNS x LINES;
    (exit code, every byte it wrote to the terminal). Ctrl-C is pressed (SIGINT) once what it
    wrote so far satisfies ``interrupt_when``."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "CI")}
    env.update(TERM="xterm-256color", COLUMNS=str(COLUMNS), LINES=str(LINES))
    process = subprocess.Popen(
        [sys.executable, "-m", "fedsim", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        start_new_session=True,
    )
    os.close(follower)
    output = bytearray()
    deadline = time.monotonic() + 180  # past the runs' own timeout (write_config: 120 s)
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's last writer has gone
            break
        if not chunk:
            break
        output += chunk
        if interrupt_when is not None and interrupt_when(bytes(output)):
            process.send_signal(signal.SIGINT)
            interrupt_when = None
    os.close(leader)
    return process.wait(timeout=30), bytes(output)


def screen_of(output: bytes) -> list[str]:
    """What a terminal of COLUMNS x LINES shows after ``output``, line by line."""
    screen = pyte.Screen(COLUMNS, LINES)
    pyte.ByteStream(screen).feed(output)
    return [line.rstrip() for line in screen.display]


def test_a_terminal_shows_one_row_per_site_redrawn_in_place(example: Path) -> None:
    code, output = run_on_terminal("run", str(example))
    shown = screen_of(output)
    text = "\n".join(shown)
    assert code == 0, text
    run_dir = Path(next(line for line in reversed(shown) if line.strip()).strip())
    summary = json.loads((run_dir / "summary.json").read_text())
    # the table was drawn more than once, yet the screen holds it once: redrawn in place
    assert output.decode().count(TABLE_HEADER) > 1
    assert text.count(TABLE_HEADER) == 1, text
    for site in SITES:
        rows = [line for line in shown if line.startswith(f"│ {site}")]
        assert len(rows) == 1, text
        cells = [cell.strip() for cell in rows[0].strip("│").split("│")]
        counts = summary["sites"][site]
        assert cells[1] == "finished"
        assert cells[2] == summary["sites"][site]["app"]["message"]
        assert cells[3].endswith("100%")
        assert cells[4].startswith(f"{counts['messages_sent']} msg / {counts['bytes_sent']} ")
        received = f"{counts['messages_received']} msg / {counts['bytes_received']} "
        assert cells[5].startswith(received)
    assert "site-a (coordinator)" in text
    # the per-site state lines are the table's job on a terminal; the log keeps them
    assert "site site-b: terminal" not in text
    assert "site site-b: terminal" in (run_dir / "fedsim.log").read_text()
    assert "finished in" in text  # log lines still show, above the table


def test_piped_output_has_plain_state_lines_and_the_timeline_is_kept(example: Path) -> None:
    result = fedsim("run", str(example))
    assert result.returncode == 0, result.stderr
    assert "site site-a: terminal" in result.stderr
    assert TABLE_HEADER not in result.stderr and "\x1b[" not in result.stderr
    with open(run_dir_of(result) / "states.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
    for site in SITES:
        mine = [r for r in rows if r["site"] == site]
        assert mine[0]["status"] == "running" and mine[-1]["status"] == "finished"
        assert "terminal" in {r["message"] for r in mine}
        assert mine[-1]["progress"] == "1.0"


def test_an_apps_text_is_shown_as_text_not_as_markup() -> None:
    """An app chooses its messages; Rich markup in one must neither style nor break the
    table (a stray closing tag would raise in the display's thread)."""
    from rich.console import Console

    from fedsim.progress import SiteRow, site_table
    from fedsim.relay.state import SiteTraffic

    message = "[/] [bold]fitting[/bold] [link=x]"
    row = SiteRow("hub", True, "running", {"message": message, "progress": 0.25}, SiteTraffic())
    console = Console(record=True, width=150, color_system=None)
    console.print(site_table([row], None))
    shown = console.export_text()
    assert message in shown and "25%" in shown and "hub (coordinator)" in shown


def test_ctrl_c_on_a_terminal_leaves_the_sites_fate_and_the_cursor(tmp_path: Path) -> None:
    config = write_run(
        tmp_path, BEHAVE_APP, {"hub": {"behave": {"hang": True}}, "clinic": {"behave": {}}}
    )

    def hub_runs_its_first_state(output: bytes) -> bool:
        rows = [line.split("│") for line in screen_of(output) if line.startswith("│ hub ")]
        return any(row[2].strip() == "running" and row[3].strip() == "initial" for row in rows)

    code, output = run_on_terminal("run", str(config), interrupt_when=hub_runs_its_first_state)
    text = "\n".join(screen_of(output))
    assert code == ExitCode.INTERRUPTED, text
    assert "interrupted (Ctrl-C)" in text
    hub = [line for line in text.splitlines() if line.startswith("│ hub (coordinator)")]
    assert len(hub) == 1 and "stopped" in hub[0], text
    # the display hid the cursor while it drew, and gave it back
    assert output.rfind(b"\x1b[?25h") > output.rfind(b"\x1b[?25l") >= 0
