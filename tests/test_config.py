"""Bad configs are refused before anything starts, naming the file, the field and the fault."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from typer.testing import CliRunner

from fedsim.cli.main import app
from fedsim.config import load_config
from fedsim.errors import ConfigError, ExitCode
from tests.conftest import BEHAVE_APP, MEAN_APP, ROOT

runner = CliRunner()


def write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "b").mkdir(exist_ok=True)
    path = tmp_path / "fedsim.toml"
    path.write_text(f'app = "{MEAN_APP}"\n' + body)
    return path


TWO_SITES = """
[[sites]]
name = "a"
coordinator = true
inputs = ["a"]

[[sites]]
name = "b"
inputs = ["b"]
"""


def validate(path: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["validate", str(path)])
    return result.exit_code, result.output


def test_a_good_config_validates_with_paths_resolved(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_SITES)
    code, output = validate(path)
    assert code == 0, output
    assert "2 sites" in output
    config = load_config(path)
    assert config.sites[1].inputs == [tmp_path / "b"]
    assert config.coordinator.name == "a"
    assert config.output_dir == Path.cwd() / "runs"  # by default where fedsim is started
    path.write_text(path.read_text().replace("\n[[sites]]", 'output_dir = "out"\n[[sites]]', 1))
    assert load_config(path).output_dir == tmp_path / "out"  # a given one is relative to it


@pytest.mark.parametrize(
    ("body", "field", "fault"),
    [
        ('colour = "red"\n' + TWO_SITES, "colour", "unknown key"),
        (
            TWO_SITES.replace('inputs = ["b"]', 'inputs = ["b"]\ncoordinator = true'),
            "sites",
            "exactly one site needs coordinator = true; found: a, b",
        ),
        (TWO_SITES.replace("coordinator = true\n", ""), "sites", "found: none"),
        (
            TWO_SITES.replace('inputs = ["b"]', 'inputs = ["b", "missing.csv"]'),
            "sites[1].inputs[1]",
            "no such file or directory",
        ),
        (TWO_SITES.replace('name = "b"', 'name = "a"'), "sites", "repeated: a"),
        (TWO_SITES.replace('name = "b"', 'name = "b c"'), "sites[1].name", "should match"),
        (TWO_SITES.replace('name = "b"', 'name = "b"\nport = 1'), "sites[1].port", "unknown key"),
        ("timeout = -1\n" + TWO_SITES, "timeout", "greater than 0"),
        ("sites = []\n", "sites", "at least 1"),
        # the run's name is a part of the run directory's name: no way out of output_dir
        ('name = "../../x"\n' + TWO_SITES, "name", '"../../x" should match'),
        ('name = "a/b"\n' + TWO_SITES, "name", '"a/b" should match'),
        ('name = "a_b"\n' + TWO_SITES, "name", "letters, digits and '-'"),
        # strict numbers: no true for 1 s, no inf or nan, no strings
        ("timeout = true\n" + TWO_SITES, "timeout", "valid number (got true)"),
        ("timeout = inf\n" + TWO_SITES, "timeout", "finite number (got inf)"),
        ('timeout = "10"\n' + TWO_SITES, "timeout", 'valid number (got "10")'),
        ("poll_interval = nan\n" + TWO_SITES, "poll_interval", "finite number (got nan)"),
        ("poll_interval = false\n" + TWO_SITES, "poll_interval", "valid number (got false)"),
        ("seed = true\n" + TWO_SITES, "seed", "valid integer (got true)"),
        ("seed = 1.5\n" + TWO_SITES, "seed", "valid integer (got 1.5)"),
        # strict booleans: no 1 or "yes"
        ("shorten_waits = 1\n" + TWO_SITES, "shorten_waits", "valid boolean (got 1)"),
        ('capture_payloads = "yes"\n' + TWO_SITES, "capture_payloads", 'boolean (got "yes")'),
        (
            TWO_SITES.replace("coordinator = true", 'coordinator = "yes"'),
            "sites[0].coordinator",
            'valid boolean (got "yes")',
        ),
        (
            TWO_SITES + "[compare.tolerances]\nmax_rel_mean_diff = true\n",
            "compare.tolerances.max_rel_mean_diff",
            "valid number (got true)",
        ),
        (
            TWO_SITES + "[compare.tolerances]\nmax_rel_mean_diff = inf\n",
            "compare.tolerances.max_rel_mean_diff",
            "finite number (got inf)",
        ),
        # a misspelt measure would be ignored silently; the valid ones are named
        (
            TWO_SITES + "[compare.tolerances]\nmax_mean_diff = 1e-9\n",
            "compare.tolerances.max_mean_diff",
            "no such measure for app 'mean'; its measures are: max_rel_mean_diff",
        ),
        # inputs that cannot be copied: a device is read forever
        (
            TWO_SITES.replace('inputs = ["b"]', 'inputs = ["/dev/zero"]'),
            "sites[1].inputs[0]",
            "/dev/zero is a character device; an input must be a regular file or a folder",
        ),
        (
            TWO_SITES.replace('inputs = ["b"]', 'inputs = ["b\\u0000c"]'),
            "sites[1].inputs[0]",
            "not a usable path",
        ),
        (
            TWO_SITES.replace('inputs = ["b"]', f'inputs = ["{"x" * 300}"]'),
            "sites[1].inputs[0]",
            "File name too long",
        ),
        # runs under an app or an input would be handed to every site
        (
            f'output_dir = "{MEAN_APP}/runs"\n' + TWO_SITES,
            "output_dir",
            f"output_dir {MEAN_APP}/runs lies inside app ({MEAN_APP})",
        ),
        ('output_dir = "b/runs"\n' + TWO_SITES, "output_dir", "lies inside sites[1].inputs[0]"),
        ('output_dir = "a"\n' + TWO_SITES, "output_dir", "lies inside sites[0].inputs[0]"),
        # where a site lives: only ssh://, parsed now; SSH keys only on SSH sites
        (
            TWO_SITES.replace('name = "b"', 'name = "b"\nlocation = "http://h"'),
            "sites[1].location",
            'scheme "http" is not supported: only ssh://[USER@]HOST[:PORT]',
        ),
        (
            TWO_SITES.replace('name = "b"', 'name = "b"\nlocation = "h"'),
            "sites[1].location",
            '"h" is not a location',
        ),
        (
            TWO_SITES.replace('name = "b"', 'name = "b"\nlocation = "ssh://u:pw@h"'),
            "sites[1].location",
            "is not ssh://[USER@]HOST[:PORT] (no password",
        ),
        (
            TWO_SITES.replace('name = "b"', 'name = "b"\nlocation = "ssh://-oProxyCommand=x"'),
            "sites[1].location",
            "not starting with '-'",
        ),
        (
            TWO_SITES.replace('name = "b"', 'name = "b"\nlocation = "ssh://h:0"'),
            "sites[1].location",
            "port 0 is out of range",
        ),
        (
            TWO_SITES.replace('name = "b"', 'name = "b"\nlocation = 1'),
            "sites[1].location",
            "valid string (got 1)",
        ),
        (
            TWO_SITES.replace('name = "b"', 'name = "b"\nworkdir = "/srv/x"'),
            "sites[1].workdir",
            'only for a site on an SSH host: set location = "ssh://HOST"',
        ),
        (
            TWO_SITES.replace('name = "b"', 'name = "b"\nssh_accept_new = true'),
            "sites[1].ssh_accept_new",
            "only for a site on an SSH host",
        ),
        (
            TWO_SITES.replace('name = "b"', 'name = "b"\nlocation = "local"\nssh_key = "k"'),
            "sites[1].ssh_key",
            "only for a site on an SSH host",
        ),
        (
            TWO_SITES.replace('name = "b"', 'name = "b"\nssh_accept_new = "yes"'),
            "sites[1].ssh_accept_new",
            'valid boolean (got "yes")',
        ),
        ('platform = "flower"\n' + TWO_SITES, "platform", "'embedded' or 'featurecloud'"),
        ("project_id = 3\n" + TWO_SITES, "project_id", 'only with platform = "featurecloud"'),
        (
            'platform = "featurecloud"\nproject_id = "3"\n' + TWO_SITES,
            "project_id",
            'valid integer (got "3")',
        ),
        (
            'platform = "featurecloud"\nproject_id = 0\n' + TWO_SITES,
            "project_id",
            "greater than 0",
        ),
        (
            'platform = "featurecloud"\n' + TWO_SITES,
            "sites[1].env_file",
            'missing: with platform = "featurecloud" each site\'s env file holds its own',
        ),
        (
            TWO_SITES + '[featurecloud]\nwebsite = "http://127.0.0.1:1"\n',
            "featurecloud",
            'only with platform = "featurecloud"',
        ),
        (
            'platform = "featurecloud"\n'
            + TWO_SITES
            + '[featurecloud]\nregistry = "featurecloud.ai"\n',
            "featurecloud.registry",
            "'featurecloud.ai' is not an http:// or https:// address with a host",
        ),
        (
            'platform = "featurecloud"\n'
            + TWO_SITES
            + '[featurecloud]\ncli_requirements = "nope.txt"\n',
            "featurecloud.cli_requirements",
            "no such file",
        ),
        (
            'platform = "featurecloud"\n'
            + TWO_SITES.replace('name = "b"', 'name = "b"\nlocation = "dask"'),
            "sites[1].location",
            "a Dask worker has no way to run it",
        ),
    ],
)
def test_each_config_error_names_file_field_and_fault(
    tmp_path: Path, body: str, field: str, fault: str
) -> None:
    path = write(tmp_path, body)
    code, output = validate(path)
    assert code == ExitCode.CONFIG
    flat = " ".join(output.split())
    assert f"{path}: {field}: " in flat
    assert fault in flat


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, 'colour = "red"\ntimeout = 0\n' + TWO_SITES)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "colour" in str(info.value) and "timeout" in str(info.value)


def test_missing_app_and_bad_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "fedsim.toml"
    path.write_text(
        'app = "nowhere"\n'
        + TWO_SITES.replace('inputs = ["a"]', "inputs = []").replace(
            'inputs = ["b"]', "inputs = []"
        )
    )
    code, output = validate(path)
    assert code == ExitCode.CONFIG and "app: no such app directory" in " ".join(output.split())
    path.write_text("app = \n")
    code, output = validate(path)
    assert code == ExitCode.CONFIG and "not valid TOML" in output
    code, output = validate(tmp_path / "absent.toml")
    assert code == ExitCode.CONFIG and "config file not found" in output


def test_an_app_directory_needs_main_and_requirements(tmp_path: Path) -> None:
    (tmp_path / "notanapp").mkdir()
    path = write(tmp_path, TWO_SITES)
    path.write_text(path.read_text().replace(str(MEAN_APP), "notanapp"))
    code, output = validate(path)
    assert code == ExitCode.CONFIG
    assert "not a FeatureCloud app directory: no main.py, requirements.txt" in " ".join(
        output.split()
    )


def test_a_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "a.env"
    secret.write_text("TOKEN=abc\n")
    secret.chmod(0o644)
    with_env = TWO_SITES.replace('inputs = ["a"]', 'inputs = ["a"]\nenv_file = "a.env"')
    path = write(tmp_path, with_env)
    code, output = validate(path)
    assert code == ExitCode.CONFIG
    assert "sites[0].env_file" in output and "chmod 600" in " ".join(output.split())
    assert "abc" not in output
    secret.chmod(0o600)
    assert validate(path)[0] == 0


def test_a_missing_input_is_reported_before_any_site_starts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'output_dir = "runs"\n' + TWO_SITES.replace('inputs = ["b"]', 'inputs = ["gone.csv"]'),
    )
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == ExitCode.CONFIG
    assert "gone.csv" in result.output
    assert not (tmp_path / "runs").exists()  # nothing was started, not even a run directory


def test_init_writes_a_config_that_validates_as_written(tmp_path: Path) -> None:
    target = tmp_path / "study" / "fedsim.toml"
    assert runner.invoke(app, ["init", str(target)]).exit_code == 0
    code, output = validate(target)
    assert code == 0, output
    assert "app column-stats, 3 sites" in output
    again = runner.invoke(app, ["init", str(target)])
    assert again.exit_code == ExitCode.CONFIG and "--force" in again.output  # no overwrite
    assert runner.invoke(app, ["init", str(target), "--force"]).exit_code == 0


def lines_of(path: Path) -> list[str]:
    """The config's faults, one per line, as ``fedsim validate`` prints them."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).splitlines()


def test_field_faults_do_not_hide_the_faults_between_fields(tmp_path: Path) -> None:
    # a type error in a field used to stop pydantic before the checks that span fields
    body = TWO_SITES.replace('inputs = ["b"]', 'inputs = ["b"]\ncoordinator = true')
    path = write(tmp_path, 'colour = "red"\ntimeout = true\noutput_dir = "a/runs"\n' + body)
    lines = lines_of(path)
    assert [line.split(": ")[1] for line in lines] == [
        "timeout",
        "colour",
        "sites",
        "output_dir",
    ]
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert "found: a, b" in lines[2] and "sites[0].inputs[0]" in lines[3]


def workflow(tmp_path: Path, last: Path = MEAN_APP, extra: str = "") -> Path:
    path = write(tmp_path, TWO_SITES + extra)
    steps = f'[[steps]]\napp = "{BEHAVE_APP}"\ninputs = ["a"]\n\n[[steps]]\napp = "{last}"\n'
    path.write_text(path.read_text().replace(f'app = "{MEAN_APP}"\n', "") + "\n" + steps)
    return path


def test_validate_describes_a_workflow(tmp_path: Path) -> None:
    code, output = validate(workflow(tmp_path))
    assert code == 0, output
    assert "ok: workflow behave -> mean, 2 sites: a (coordinator), b" in " ".join(output.split())


def test_a_workflow_needs_its_steps_apart_from_app(tmp_path: Path) -> None:
    path = workflow(tmp_path)
    path.write_text(f'app = "{MEAN_APP}"\n' + path.read_text())
    assert lines_of(path) == [
        f"{path}: app: give either app (one app) or [[steps]] (a workflow), not both"
    ]
    path.write_text(TWO_SITES)
    assert lines_of(path) == [f"{path}: app: missing: give app (one app) or [[steps]] (a workflow)"]


def test_tolerances_are_checked_against_the_last_steps_app(tmp_path: Path) -> None:
    good = "[compare.tolerances]\nmax_rel_mean_diff = 1e-9\n"
    assert load_config(workflow(tmp_path, MEAN_APP, good)).compare.tolerances == {
        "max_rel_mean_diff": 1e-9
    }
    path = workflow(tmp_path, BEHAVE_APP, good)  # an app fedsim has no measures for
    assert lines_of(path) == [
        f"{path}: compare.tolerances.max_rel_mean_diff: no such measure: app 'behave' is not "
        "one fedsim knows, so its tolerances are max_abs_diff:<file>[:<column>] and "
        "max_rel_diff:<file>[:<column>], per output file or column"
    ]
    generic = "[compare.tolerances]\n'max_abs_diff:out.csv' = 0.1\n'max_rel_diff:r.json:a' = 0.1\n"
    assert load_config(workflow(tmp_path, BEHAVE_APP, generic)).compare.tolerances
    forest = ROOT / "apps" / "random-forest"
    path = workflow(tmp_path, forest, "[compare.tolerances]\nfederated_accuracy = 0.9\n")
    assert lines_of(path) == [
        f"{path}: compare.tolerances.federated_accuracy: no such measure: app 'random-forest' "
        "has only reported measures, none takes a tolerance"
    ]


def test_a_run_started_inside_an_input_may_not_write_runs_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, TWO_SITES)
    monkeypatch.chdir(tmp_path / "a")  # the default output_dir is runs/ where fedsim starts
    assert lines_of(path) == [
        f"{path}: output_dir: output_dir (default: runs/ where fedsim is started) "
        f"{tmp_path}/a/runs lies inside sites[0].inputs[0] ({tmp_path}/a), which sites are "
        "given; put the runs outside every app and input"
    ]


@pytest.fixture
def specials(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A FIFO, a listening Unix socket, a symlink to the FIFO and a symlink loop."""
    os.mkfifo(tmp_path / "fifo")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    (tmp_path / "to-fifo").symlink_to(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    yield {name: tmp_path / name for name in ("fifo", "sock", "to-fifo", "loop")}
    server.close()


@pytest.mark.parametrize(
    ("given", "fault"),
    [
        ("fifo", "{fifo} is a named pipe (FIFO); an input must be a regular file or a folder"),
        ("sock", "{sock} is a socket; an input must be a regular file or a folder"),
        # a symlink given in the config is followed, then its target is checked
        ("to-fifo", "{fifo} is a named pipe (FIFO); an input must be"),
        ("loop", "not a usable path: 'loop' (Symlink loop from '{loop}')"),
    ],
)
def test_an_input_must_be_a_regular_file_or_folder(
    tmp_path: Path, specials: dict[str, Path], given: str, fault: str
) -> None:
    path = write(tmp_path, TWO_SITES.replace('inputs = ["b"]', f'inputs = ["b", "{given}"]'))
    (line,) = lines_of(path)
    assert line.startswith(f"{path}: sites[1].inputs[1]: ")
    assert fault.format(**specials) in line


def test_a_symlinked_folder_is_a_good_input_and_resolved(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "b")
    path = write(tmp_path, TWO_SITES.replace('inputs = ["b"]', 'inputs = ["link"]'))
    assert load_config(path).sites[1].inputs == [tmp_path / "b"]


def test_a_config_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "fedsim.toml"
    path.write_bytes(b'name = "caf\xe9"\n')  # Latin-1, not UTF-8
    for config, fault in [
        (path, "not UTF-8 text (byte 11); TOML files are UTF-8"),
        (tmp_path, "is a folder, not a config file"),
        (Path("/dev/zero"), "is a character device, not a config file"),  # read forever before
    ]:
        code, output = validate(config)
        assert code == ExitCode.CONFIG
        assert output == f"error: {config}: {fault}\n"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to drop root")
def test_a_config_without_read_permission_is_one_line() -> None:
    # root reads any file, so the command runs as nobody; the folder must be open to nobody
    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o755)
        config = folder / "fedsim.toml"
        config.write_text("sites = []\n")
        config.chmod(0o000)
        command = [sys.executable, "-m", "fedsim", "validate", str(config)]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == ExitCode.CONFIG, result.stderr
        assert result.stderr == f"error: {config}: cannot read: Permission denied\n"
    finally:
        shutil.rmtree(folder)


def test_keys_that_look_like_markup_or_lines_are_reported_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, '"[/]" = 1\n"[bold]x" = 2\n"a\\nb: c" = 3\n' + TWO_SITES)
    code, output = validate(path)
    assert code == ExitCode.CONFIG
    assert f'{path}: "[/]": unknown key' in output and f'{path}: "[bold]x": unknown key' in output
    assert f'{path}: "a\\nb: c": unknown key' in output  # quoted as TOML would, on one line
    assert len(output.splitlines()) == 3


def test_limits_have_defaults_and_a_site_may_override_them(tmp_path: Path) -> None:
    body = TWO_SITES.replace('inputs = ["b"]', 'inputs = ["b"]\nlimits = { processes = 32 }')
    config = load_config(write(tmp_path, '[limits]\nmemory = "512MiB"\n' + body))
    a, b = (config.limits_of(site) for site in config.sites)
    assert (a.memory, a.processes, a.output) == (512 * 2**20, 512, 10 * 2**30)
    assert (b.memory, b.processes) == (512 * 2**20, 32)


def test_bad_limits_name_the_field(tmp_path: Path) -> None:
    body = TWO_SITES.replace('inputs = ["b"]', 'inputs = ["b"]\nlimits = { processes = true }')
    lines = lines_of(write(tmp_path, '[limits]\nmemory = "lots"\ncpu = inf\nswap = 1\n' + body))
    fields = sorted(line.split(": ")[1] for line in lines)
    assert fields == ["limits.cpu", "limits.memory", "limits.swap", "sites[1].limits.processes"]
    assert any("not a size: 'lots'" in line for line in lines)


SSH_SITE = TWO_SITES.replace('name = "b"', 'name = "b"\nlocation = "ssh://alice@Alias-1:2222"')


def test_an_ssh_site_validates_and_a_bad_location_names_the_field(tmp_path: Path) -> None:
    """Validation never connects (it only reads the config); a malformed location is a fault
    of the field, before anything starts."""
    result = runner.invoke(app, ["validate", str(write(tmp_path, SSH_SITE))])
    assert result.exit_code == 0, result.output
    bad = write(tmp_path, SSH_SITE.replace("ssh://alice@Alias-1:2222", "ssh://alice@host:99999"))
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == ExitCode.CONFIG, result.output
    flat = " ".join(result.output.split())
    assert f"{bad}: sites[1].location: port 99999 is out of range" in flat


def test_an_ssh_site_is_typed_for_the_code_that_connects(tmp_path: Path) -> None:
    key = tmp_path / "id_test"
    key.write_text("not really a key\n")
    key.chmod(0o600)
    body = SSH_SITE.replace(
        "location = ",
        'ssh_key = "id_test"\nworkdir = "/srv/fedsim"\nssh_accept_new = true\nlocation = ',
    )
    config = load_config(write(tmp_path, body))
    assert config.sites[0].ssh is None  # no location: local
    target = config.sites[1].ssh
    assert target is not None
    assert (target.host, target.user, target.port) == ("Alias-1", "alice", 2222)  # case kept
    assert (target.key, target.workdir, target.accept_new) == (key, "/srv/fedsim", True)
    with pytest.raises(AttributeError):
        target.host = "other"  # type: ignore[misc]

    bare = SSH_SITE.replace("ssh://alice@Alias-1:2222", "ssh://[fd00::1]")
    target = load_config(write(tmp_path, bare)).sites[1].ssh
    assert target is not None
    assert (target.host, target.user, target.port) == ("fd00::1", None, None)
    assert (target.key, target.workdir, target.accept_new) == (None, "~/.fedsim", False)
    local = TWO_SITES.replace('name = "b"', 'name = "b"\nlocation = "local"')
    assert load_config(write(tmp_path, local)).sites[1].ssh is None


def test_an_ssh_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "id_test"
    key.write_text("secret key material\n")
    key.chmod(0o640)
    path = write(tmp_path, SSH_SITE.replace("location = ", 'ssh_key = "id_test"\nlocation = '))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}: sites[1].ssh_key: {key} is a private key but is readable by others" in str(
        info.value
    )
    assert "chmod 600" in str(info.value) and "secret" not in str(info.value)
    key.unlink()
    with pytest.raises(ConfigError, match=r"sites\[1\]\.ssh_key: no such file"):
        load_config(path)


def test_the_recorded_config_loads_again(tmp_path: Path) -> None:
    """What the run directory records (and scripts copy, such as the benchmark) is a config
    fedsim accepts, with the same meaning."""
    original = load_config(write(tmp_path, SSH_SITE))
    again = tmp_path / "again.toml"
    again.write_text(tomli_w.dumps(original.public_dict()))
    assert load_config(again).public_dict() == original.public_dict()


DASK_SITES = TWO_SITES.replace('name = "b"', 'name = "b"\nlocation = "dask"')


def test_a_dask_site_and_its_cluster_validate(tmp_path: Path) -> None:
    from fedsim.sites.factory import site_kind

    path = write(
        tmp_path, '[dask]\nscheduler = "tcp://127.0.0.1:8786"\nsites_per_worker = 2\n' + DASK_SITES
    )
    config = load_config(path)
    assert config.dask is not None and config.dask.relay_bind == ("127.0.0.1", 0)
    assert [site_kind(s) for s in config.sites] == ["local", "dask"]
    assert config.sites[1].ssh is None
    started = write(
        tmp_path,
        '[dask]\ncluster = "distributed.LocalCluster"\nrelay_address = "[::1]:8443"\n'
        "cluster_options = { n_workers = 2, processes = true }\n" + DASK_SITES,
    )
    config = load_config(started)
    assert config.dask is not None and config.dask.relay_bind == ("::1", 8443)
    assert config.dask.cluster_options == {"n_workers": 2, "processes": True}


def test_every_dask_fault_is_reported_at_once(tmp_path: Path) -> None:
    """A dask site without its table, a table naming two clusters, and each bad field."""
    no_table = write(tmp_path, DASK_SITES)
    code, output = validate(no_table)
    assert code == ExitCode.CONFIG
    assert 'sites[1].location: a site with location = "dask" needs a [dask] table' in output
    bad = write(
        tmp_path,
        '[dask]\nscheduler = "http://h:1"\ncluster = "LocalCluster"\n'
        'relay_address = "0.0.0.0:9000"\nsites_per_worker = 0\nworkers = 3\n' + DASK_SITES,
    )
    code, output = validate(bad)
    assert code == ExitCode.CONFIG
    for field, fault in [
        ("dask.scheduler", '"http://h:1" is not a scheduler address: give tcp://HOST:PORT'),
        ("dask.cluster", '"LocalCluster" is not a class to import: give module.Class'),
        ("dask.relay_address", "not a wildcard"),
        ("dask.sites_per_worker", "greater than 0"),
        ("dask.workers", ""),
        ("dask", "give either scheduler"),
    ]:
        lines = [line for line in output.splitlines() if f"{bad}: {field}: " in line]
        assert lines and fault in lines[0], (field, output)
    neither = write(tmp_path, '[dask]\nrelay_address = "h:99999"\n' + DASK_SITES)
    code, output = validate(neither)
    assert "dask: give either scheduler" in output and "one of them" in output
    assert 'dask.relay_address: "h:99999" is not an address for the relay' in output
