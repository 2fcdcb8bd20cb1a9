"""Bad configs are refused before anything starts, naming the file, the field and the fault."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsim.cli.main import app
from fedsim.config import load_config
from fedsim.errors import ConfigError, ExitCode
from tests.conftest import MEAN_APP

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


def test_init_writes_a_template_that_validates_once_its_paths_exist(tmp_path: Path) -> None:
    target = tmp_path / "fedsim.toml"
    assert runner.invoke(app, ["init", str(target)]).exit_code == 0
    assert runner.invoke(app, ["init", str(target)]).exit_code == ExitCode.CONFIG  # no overwrite
    (tmp_path / "data" / "site-a").mkdir(parents=True)
    (tmp_path / "data" / "site-b").mkdir(parents=True)
    target.write_text(target.read_text().replace('"apps/mean"', f'"{MEAN_APP}"'))
    code, output = validate(target)
    assert code == 0, output
