"""The pvfinder command: each sub-command end to end, and one-line errors for user mistakes."""

from __future__ import annotations

import json

import pytest

from pvfinder.cli import main


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "sample.root"
    assert main(["simulate", "-n", "200", "--seed", "3", "-o", str(path)]) == 0
    return path


def test_simulate_prints_statistics(sample_file, capsys):
    assert main(["simulate", "-n", "50", "--nu", "2", "--set", "ghost_fraction=0.0"]) == 0
    out = capsys.readouterr().out
    assert "simulated 50 events" in out and "mean_visible_pvs" in out


def test_reconstruct_then_validate(sample_file, tmp_path, capsys):
    output = tmp_path / "pvs.root"
    assert main(["reconstruct", str(sample_file), "-o", str(output), "--backend", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "reconstructed" in out and "efficiency" in out.lower()
    assert main(["validate", str(sample_file), str(output), "--plots", str(tmp_path / "plots")]) == 0
    assert list((tmp_path / "plots").glob("*.png"))


def test_config_file_and_overrides(sample_file, tmp_path, capsys):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"min_tracks_per_vertex": 6}))
    output = tmp_path / "pvs.root"
    args = ["reconstruct", str(sample_file), "-o", str(output), "--backend", "cpu",
            "--config", str(config), "--set", "chi2_cut=9", "--no-validate"]
    assert main(args) == 0
    assert "efficiency" not in capsys.readouterr().out.lower()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reconstruct", "missing.root", "-o", "x.root"], "missing.root: no such file"),
        (["reconstruct", "{sample}", "-o", "x.root", "--set", "zmin"], "--set expects NAME=VALUE"),
        (["reconstruct", "{sample}", "-o", "x.root", "--set", "zmin=500"], "must be greater than zmin"),
        (["simulate", "-n", "10", "--set", "not_a_condition=1"], "not_a_condition"),
    ],
)
def test_user_mistakes_are_one_line_errors(argv, message, sample_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(sample=sample_file) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_info_names_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cpu    available" in out and "cuda" in out and "'auto' selects" in out
