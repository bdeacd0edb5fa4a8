"""The CLI as a newcomer meets it: failures explained, no stray databases, --set/--storage everywhere,
export into a folder, no blank plots, --version, help on every option, hints that find the study again."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import optuna
import pytest
import tiny
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from search.cli import build_parser, main
from search.report import next_hints

LR = {"train.learning_rate": FloatDistribution(1e-3, 1e-2, log=True)}


def _db(tmp: Path, name: str) -> optuna.Study:
    return optuna.create_study(study_name=name, storage=f"sqlite:///{tmp / (name + '.db')}", direction="maximize")


def test_status_shows_why_trials_failed(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="st")
    study = _db(tmp_path, "st")
    study.add_trial(optuna.trial.create_trial(params={"train.learning_rate": 0.002}, distributions=LR, value=0.7))
    study.add_trial(
        optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"error": "ConfigError: no layer named 'qq'"})
    )
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "failed trials:" in out and "trial 1: ConfigError: no layer named 'qq'" in out
    assert main(["status", str(path), "--json"]) == 0
    assert "no layer named" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["status", "export", "plot", "report", "dashboard"])
def test_a_missing_study_creates_no_database(
    tmp_path: Path, bert_dir: Path, command: str, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="nothing")
    extra = ["--out", str(tmp_path / "x.yaml")] if command == "export" else []
    assert main([command, str(path), *extra]) == 2
    assert "no study named 'nothing'" in capsys.readouterr().err
    assert not (tmp_path / "nothing.db").exists()


@pytest.mark.parametrize("command", ["run", "status", "export", "plot", "report", "dashboard", "test"])
@pytest.mark.parametrize("url,given", [("sqlite://", "--storage"), ("sqlite:///:memory:", "file")])
def test_an_in_memory_database_is_refused_by_every_command(
    tmp_path: Path, bert_dir: Path, command: str, url: str, given: str, capsys: pytest.CaptureFixture
) -> None:
    """A study in an in-memory SQLite database would be gone when the command ends: refused before anything
    runs (exit 2, no Ray, no file), naming where it came from and the file URL to use instead."""
    path = tiny.study_file(tmp_path, bert_dir, name="mem", **({"storage": url} if given == "file" else {}))
    extra = ["--out", str(tmp_path / "x.yaml")] if command == "export" else []
    where = ["--storage", url] if given == "--storage" else []
    assert main([command, str(path), *where, *extra]) == 2
    err = capsys.readouterr().err
    source = "--storage" if given == "--storage" else str(path)
    assert f"{source}: storage: expected a database that outlives one command" in err
    assert f"found {url!r}, an in-memory SQLite database" in err and f"sqlite:///{tmp_path / 'mem.db'}" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "mem.yaml"]  # no database, no runs/


def test_set_and_storage_find_a_renamed_study_in_every_command(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="orig")
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    study = optuna.create_study(study_name="renamed", storage=url, direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.learning_rate": 0.002},
            distributions=LR,
            value=0.7,
            intermediate_values={10: 0.6, 20: 0.7},
            user_attrs={"config": {"model": "m", "data": {"train": "t"}}},
        )
    )
    where = ["--set", "name=renamed", "--storage", url]
    assert main(["status", str(path), *where]) == 0
    assert "study renamed" in capsys.readouterr().out
    assert main(["export", str(path), *where, "--out", str(tmp_path / "e.yaml")]) == 0
    assert (tmp_path / "e.yaml").exists()
    assert main(["plot", str(path), *where, "--out", str(tmp_path / "plots")]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["history.png", "learning_curves.png"]
    assert main(["report", str(path), *where, "--out", str(tmp_path / "r.html")]) == 0
    assert "Study renamed" in (tmp_path / "r.html").read_text()
    assert not (tmp_path / "orig.db").exists()


def test_export_into_a_folder(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="ex")
    study = _db(tmp_path, "ex")
    for value in (0.6, 0.8):
        study.add_trial(
            optuna.trial.create_trial(
                params={"train.learning_rate": 0.002},
                distributions=LR,
                value=value,
                user_attrs={"config": {"data": {"train": "t"}}},
            )
        )
    (tmp_path / "out").mkdir()
    assert main(["export", str(path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "best.yaml").read_text().count("trial 1") >= 1
    assert main(["export", str(path), "--out", str(tmp_path / "new") + "/", "--trial", "0"]) == 0
    assert (tmp_path / "new" / "trial-0.yaml").exists()


def test_plot_with_nothing_to_plot_writes_nothing(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="empty")
    study = _db(tmp_path, "empty")
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"error": "boom"}))
    assert main(["plot", str(path), "--out", str(tmp_path / "plots")]) == 0
    assert "nothing to plot yet" in capsys.readouterr().out
    assert not (tmp_path / "plots").exists()


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("sftune ") and len(out.split()) >= 2


def test_every_option_has_help() -> None:
    parser = build_parser()
    missing = []
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in [("sftune", parser), *subs.choices.items()]:
        for action in sub._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing


def test_hints_carry_set_and_storage_and_parse(tmp_path: Path) -> None:
    hints = next_hints("my study.yaml", ["name=x y", "base.train.max_steps=5"], "sqlite:///a b.db")
    parser = build_parser()
    commands = [c.strip() for c in hints.removeprefix("next:").split("·")]
    assert [c.split()[1] for c in commands] == ["status", "report", "dashboard", "export"]
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])
        assert args.study == "my study.yaml"
        assert args.set == ["name=x y", "base.train.max_steps=5"]
        assert args.storage == "sqlite:///a b.db"
    assert next_hints("s.yaml", [], None) == (
        "next: sftune status s.yaml · sftune report s.yaml · "
        "sftune dashboard s.yaml · sftune export s.yaml --out best.yaml"
    )
