"""Collection never follows a link: real files, links, FIFOs and devices on this machine."""

from __future__ import annotations

import json
import os
import stat
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedsim.errors import ConfigError, OutputTooLarge
from fedsim.safefiles import MAX_DEPTH, Skipped, copy_inputs, copy_tree, prune_tree, zip_tree
from fedsim.sites.local import copy_inputs as copy_inputs_from_local
from tests.conftest import BEHAVE_APP, fedsim, run_dir_of, write_run

SECRET = "host secret\n"


def finishes(call: Callable[[], Any], timeout: float = 10.0) -> Any:
    """``call()``'s result; fails the test instead of hanging when it blocks (a FIFO)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"blocked for more than {timeout} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """Files outside the app's folder that it must never get at."""
    outside = tmp_path / "host"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET)
    (outside / "dir" / "inner.txt").write_text(SECRET)
    return outside


@pytest.fixture
def hostile(tmp_path: Path, host: Path) -> Path:
    """An output folder as an app could leave it."""
    out = tmp_path / "output"
    (out / "sub" / "deeper").mkdir(parents=True)
    (out / "result.txt").write_text("mine\n")
    (out / "sub" / "deeper" / "nested.txt").write_text("nested\n")
    (out / "empty").mkdir()
    (out / "file-link").symlink_to(host / "secret.txt")
    (out / "dir-link").symlink_to(host / "dir")
    (out / "sub" / "relative-link").symlink_to("../../host/secret.txt")
    os.mkfifo(out / "fifo")
    os.link(out / "result.txt", out / "hard-link.txt")
    return out


def all_text(folder: Path) -> str:
    return "".join(p.read_text() for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def reasons(skipped: list[Skipped]) -> dict[str, str]:
    return {s.path: s.reason for s in skipped}


def test_copy_takes_regular_files_and_folders_only(tmp_path: Path, hostile: Path) -> None:
    dest = tmp_path / "copy"
    skipped = finishes(lambda: copy_tree(hostile, dest))
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
        "empty",
        "hard-link.txt",
        "result.txt",
        "sub",
        "sub/deeper",
        "sub/deeper/nested.txt",
    ]
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert SECRET not in all_text(dest)
    assert (dest / "hard-link.txt").read_text() == "mine\n"  # a regular file: taken
    found = reasons(skipped)
    assert set(found) == {"dir-link", "fifo", "file-link", "sub/relative-link"}
    assert found["file-link"].startswith("symbolic link to ")
    assert str(hostile.parent / "host" / "secret.txt") in found["file-link"]
    assert found["fifo"] == "named pipe (FIFO)"


def test_zip_takes_regular_files_only(tmp_path: Path, hostile: Path) -> None:
    target = tmp_path / "results.zip"
    skipped = finishes(lambda: zip_tree(hostile, target))
    with zipfile.ZipFile(target) as archive:
        assert sorted(archive.namelist()) == [
            "hard-link.txt",
            "result.txt",
            "sub/deeper/nested.txt",
        ]
        assert archive.read("result.txt") == b"mine\n"
        assert all(SECRET.encode() not in archive.read(n) for n in archive.namelist())
    assert set(reasons(skipped)) == {"dir-link", "fifo", "file-link", "sub/relative-link"}
    assert not (tmp_path / "results.zip.partial").exists()


def test_prune_removes_links_fifos_and_not_their_targets(hostile: Path, host: Path) -> None:
    skipped = finishes(lambda: prune_tree(hostile))
    assert all(s.reason.endswith(", removed") for s in skipped)
    assert len(skipped) == 4
    assert not any(p.is_symlink() or p.is_fifo() for p in hostile.rglob("*"))
    assert (hostile / "result.txt").read_text() == "mine\n"
    assert (host / "secret.txt").read_text() == SECRET  # the link went, not what it named
    assert (host / "dir" / "inner.txt").read_text() == SECRET


def test_a_linked_folder_on_the_way_is_not_followed(tmp_path: Path, host: Path) -> None:
    out = tmp_path / "output"
    (out / "a").mkdir(parents=True)
    (out / "a" / "b").symlink_to(host)  # a/b/dir/inner.txt would reach the host
    dest = tmp_path / "copy"
    skipped = copy_tree(out, dest)
    assert reasons(skipped).keys() == {"a/b"}
    assert list((dest / "a").iterdir()) == []
    # the walked folder itself must not be a link either
    (tmp_path / "root-link").symlink_to(host)
    with pytest.raises(OSError):
        copy_tree(tmp_path / "root-link", tmp_path / "copy2")
    with pytest.raises(OSError):
        zip_tree(tmp_path / "root-link", tmp_path / "r.zip")
    assert not (tmp_path / "r.zip").exists()


def test_a_file_replaced_by_a_link_between_two_calls(tmp_path: Path, host: Path) -> None:
    out = tmp_path / "output"
    out.mkdir()
    (out / "x.txt").write_text("first\n")
    (out / "d").mkdir()
    (out / "d" / "y.txt").write_text("in d\n")
    assert copy_tree(out, tmp_path / "one") == []
    (out / "x.txt").unlink()
    (out / "x.txt").symlink_to(host / "secret.txt")
    os.rename(out / "d", tmp_path / "moved")
    (out / "d").symlink_to(host / "dir")
    skipped = copy_tree(out, tmp_path / "two")
    assert reasons(skipped).keys() == {"x.txt", "d"}
    assert SECRET not in all_text(tmp_path / "two")
    zip_tree(out, tmp_path / "r.zip")
    with zipfile.ZipFile(tmp_path / "r.zip") as archive:
        assert archive.namelist() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_node_is_never_opened(tmp_path: Path) -> None:
    out = tmp_path / "output"
    out.mkdir()
    os.mknod(out / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: endless
    (out / "ok.txt").write_text("ok\n")
    skipped = finishes(lambda: zip_tree(out, tmp_path / "r.zip"))
    assert reasons(skipped) == {"zero": "character device"}
    skipped = finishes(lambda: copy_tree(out, tmp_path / "copy"))
    assert reasons(skipped) == {"zero": "character device"}
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["ok.txt"]


def test_folders_nested_too_deep_are_skipped(tmp_path: Path) -> None:
    out = tmp_path / "output"
    deep = out.joinpath(*["d"] * (MAX_DEPTH + 3))
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("deep\n")
    skipped = copy_tree(out, tmp_path / "copy")
    assert [s.reason for s in skipped] == [f"nested deeper than {MAX_DEPTH} folders"]
    assert skipped[0].path == "/".join(["d"] * (MAX_DEPTH + 1))


def test_set_id_bits_are_dropped_and_times_kept(tmp_path: Path) -> None:
    out = tmp_path / "output"
    out.mkdir()
    (out / "tool").write_text("#!/bin/sh\n")
    os.chmod(out / "tool", 0o4755)
    os.utime(out / "tool", (0, 0))  # before 1980: zip must still manage
    copy_tree(out, tmp_path / "copy")
    copied = (tmp_path / "copy" / "tool").stat()
    assert stat.S_IMODE(copied.st_mode) == 0o755
    assert copied.st_mtime == 0
    zip_tree(out, tmp_path / "r.zip")
    with zipfile.ZipFile(tmp_path / "r.zip") as archive:
        info = archive.getinfo("tool")
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert stat.S_IMODE(info.external_attr >> 16) == 0o755


def test_byte_limit(tmp_path: Path) -> None:
    out = tmp_path / "output"
    out.mkdir()
    (out / "a.bin").write_bytes(b"a" * 600)
    (out / "b.bin").write_bytes(b"b" * 600)
    assert copy_tree(out, tmp_path / "fits", limit=1200) == []
    with pytest.raises(OutputTooLarge, match="limit of 1000 bytes"):
        copy_tree(out, tmp_path / "copy", limit=1000)
    with pytest.raises(OutputTooLarge, match="limit of 1000 bytes"):
        zip_tree(out, tmp_path / "r.zip", limit=1000)
    # a sparse file costs the app nothing: it fails before being read
    with open(out / "sparse.bin", "wb") as handle:
        handle.truncate(1 << 40)
    with pytest.raises(OutputTooLarge, match="limit of 1048576 bytes"):
        finishes(lambda: zip_tree(out, tmp_path / "r.zip", limit=1 << 20))


def test_an_interrupted_zip_never_leaves_results_zip(tmp_path: Path) -> None:
    out = tmp_path / "output"
    out.mkdir()
    for name in "abcdef":
        (out / f"{name}.bin").write_bytes(os.urandom(400))
    target = tmp_path / "results.zip"
    zip_tree(out, target)  # an older, complete zip: it no longer matches once out changes
    (out / "g.bin").write_bytes(os.urandom(400))
    with pytest.raises(OutputTooLarge):
        zip_tree(out, target, limit=1000)  # stops halfway, after two files were written
    assert not target.exists()
    assert not (tmp_path / "results.zip.partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output"]


def test_copy_inputs_merges_folders_and_refuses_clashes(tmp_path: Path, host: Path) -> None:
    assert copy_inputs_from_local is copy_inputs
    one, two = tmp_path / "one", tmp_path / "two"
    (one / "sub").mkdir(parents=True)
    (two / "sub").mkdir(parents=True)
    (one / "sub" / "a.csv").write_text("a\n")
    (two / "sub" / "b.csv").write_text("b\n")
    (two / "leak.csv").symlink_to(host / "secret.txt")
    config = tmp_path / "config.yml"
    config.write_text("x: 1\n")
    named_link = tmp_path / "named-link"
    named_link.symlink_to(one)  # a folder the user names through a link is followed
    dest = tmp_path / "input"
    skipped = copy_inputs([named_link, two, config], dest)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
        "config.yml",
        "sub",
        "sub/a.csv",
        "sub/b.csv",
    ]
    assert reasons(skipped).keys() == {str(two / "leak.csv")}
    with pytest.raises(ConfigError, match=r"both provide sub/a\.csv"):
        copy_inputs([one, one], tmp_path / "again")
    override = tmp_path / "override" / "config.yml"
    override.parent.mkdir()
    override.write_text("x: 2\n")
    copy_inputs([one, config], tmp_path / "over", overrides=[override])
    assert (tmp_path / "over" / "config.yml").read_text() == "x: 2\n"
    fifo = tmp_path / "named.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="FIFO"):
        finishes(lambda: copy_inputs([fifo], tmp_path / "fifo-dest"))


@pytest.mark.usefixtures("no_leftover_sandboxes")
def test_a_run_whose_app_leaves_links_collects_none_of_their_targets(
    tmp_path: Path, host: Path
) -> None:
    other_input = tmp_path / "data" / "clinic" / "config.yml"  # another site's input
    links = {
        "leak.txt": str(host / "secret.txt"),
        "leak-dir": str(host / "dir"),
        "other-site.yml": str(other_input),
    }
    config = write_run(
        tmp_path,
        BEHAVE_APP,
        {
            "hub": {"behave": {"links": links, "fifo": "pipe"}},
            "clinic": {"behave": {"value": 2.0}},
        },
    )
    result = fedsim("run", str(config), timeout=180)
    assert result.returncode == 0, result.stderr
    run_dir = run_dir_of(result)
    hub = run_dir / "sites" / "hub"
    clinic_input = other_input.read_text()
    with zipfile.ZipFile(hub / "results.zip") as archive:
        assert sorted(archive.namelist()) == ["partial.txt", "python.txt", "sum.json"]
        data = b"".join(archive.read(n) for n in archive.namelist())
    assert SECRET.encode() not in data and clinic_input.encode() not in data
    kept = sorted(p.name for p in (hub / "output").iterdir())
    assert kept == ["partial.txt", "python.txt", "sum.json"]  # links and FIFO removed
    assert SECRET not in all_text(hub / "output")
    assert (host / "secret.txt").read_text() == SECRET  # the targets are untouched
    assert not list(run_dir.rglob("*.partial"))

    skipped = json.loads((run_dir / "summary.json").read_text())["sites"]
    assert {s["path"]: s["reason"] for s in skipped["hub"]["skipped_outputs"]} == {
        "leak.txt": f"symbolic link to {str(host / 'secret.txt')!r}, removed",
        "leak-dir": f"symbolic link to {str(host / 'dir')!r}, removed",
        "other-site.yml": f"symbolic link to {str(other_input)!r}, removed",
        "pipe": "named pipe (FIFO), removed",
    }
    assert {s["step"] for s in skipped["hub"]["skipped_outputs"]} == {1}
    assert skipped["clinic"]["skipped_outputs"] == []
    site_log = (hub / "site.log").read_text()
    for name in ("leak.txt", "leak-dir", "other-site.yml", "pipe"):
        assert f"skipped {name!r}: " in site_log
    assert "skipped" not in (run_dir / "sites" / "clinic" / "site.log").read_text()
