"""Paths a run writes, checked before Ray starts and before the study is created; a key the study sets
itself (`output_dir` under `base:`) refused where it would be ignored. Each: exit 2, the message, no traceback,
an existing study database untouched."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest
import tiny
import yaml

from search.cli import main
from search.config import load_study


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray must not start: these runs end at their checks."""
    import search._ray.cluster

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Ray started")

    monkeypatch.setattr(search._ray.cluster, "ray_cluster", refuse)


def _existing_db(tmp_path: Path) -> tuple[Path, bytes]:
    db = tmp_path / "s.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}", direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.25))
    del study
    return db, db.read_bytes()


def _refused(path: Path, capsys: pytest.CaptureFixture, *extra: str) -> str:
    assert main(["run", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("existing", [False, True])
def test_an_output_dir_under_a_file_is_refused_before_anything_runs(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture, existing: bool
) -> None:
    blocker = tmp_path / "some_file"
    blocker.write_text("not a folder")
    path = tiny.study_file(tmp_path, bert_dir, output_dir=str(blocker / "sub"))
    db, before = _existing_db(tmp_path) if existing else (tmp_path / "s.db", b"")
    err = _refused(path, capsys)
    assert f"{path}: output_dir: cannot write to {blocker / 'sub'}: Not a directory" in err
    assert (db.read_bytes() == before) if existing else not db.exists()  # untouched, or never created


def test_an_output_dir_that_is_a_file_is_refused(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    out.write_text("")
    path = tiny.study_file(tmp_path, bert_dir, output_dir=str(out))
    assert f"output_dir: cannot write to {out}: it is a file, not a folder" in _refused(path, capsys)


def test_an_immutable_output_dir_is_refused(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0
    ):
        pytest.skip(
            "chattr +i is not available here (needs root and a file system with the immutable flag); "
            "the under-a-file tests cover the same check"
        )
    try:
        path = tiny.study_file(tmp_path, bert_dir, output_dir=str(locked / "runs"))
        db, before = _existing_db(tmp_path)
        err = _refused(path, capsys)
        assert f"output_dir: cannot write to {locked / 'runs'}: Operation not permitted" in err
        assert db.read_bytes() == before
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_an_artifact_folder_that_cannot_be_written_is_refused(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    blocker = tmp_path / "some_file"
    blocker.write_text("")
    path = tiny.study_file(tmp_path, bert_dir, artifacts=str(blocker / "artifacts"))
    data = yaml.safe_load(path.read_text())
    data["base"]["save"] = "adapter"
    path.write_text(yaml.safe_dump(data))
    db, before = _existing_db(tmp_path)
    err = _refused(path, capsys)
    assert f"artifacts: cannot write to {blocker / 'artifacts'}: Not a directory" in err
    assert db.read_bytes() == before


def test_output_dir_in_an_inline_base_is_noted(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(tmp_path, bert_dir)  # its base, a train config, sets output_dir
    cfg = load_study(path)
    assert cfg.notes == [
        f"note: {path}: base.output_dir ({tmp_path / 'out'}) is for `sftune train` and not used by "
        "this study, which puts each trial in <output_dir>/trials/ (set output_dir at the top of "
        "the study file to move them)"
    ]


def test_output_dir_set_under_base_on_the_command_line_is_refused(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tiny.study_file(tmp_path, bert_dir)
    db, before = _existing_db(tmp_path)
    err = _refused(path, capsys, "--set", "base.output_dir=elsewhere")
    assert "--set: base.output_dir: the study sets each trial's output_dir" in err and "(--set output_dir=...)" in err
    assert db.read_bytes() == before


def test_output_dir_in_a_base_file_is_noted_not_refused(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(tmp_path, bert_dir)
    data = yaml.safe_load(path.read_text())
    base = {**data["base"], "output_dir": "runs/solo"}
    tiny.write_config(tmp_path / "train.yaml", base)
    data["base"] = "train.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_study(path)
    assert cfg.notes == [
        f"note: {tmp_path / 'train.yaml'}: output_dir (runs/solo) is for `sftune train` and not used "
        "by this study, which puts each trial in <output_dir>/trials/ (set output_dir at the top of "
        "the study file to move them)"
    ]
    assert cfg.trial_config({}, 3)["output_dir"] == str(tmp_path / "runs" / "trials" / "0003")
