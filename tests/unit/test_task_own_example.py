"""The worked example of docs/tasks.md, a task of the user's own, runs as written; a broken own task exits 2."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest
import tiny
from conftest import REPO

from search.cli import main
from trainer import config_from_dict, run_job


def _example(tmp: Path) -> Path:
    text = (REPO / "docs" / "tasks.md").read_text(encoding="utf-8")
    code = re.search(r"<!-- example:yesno_task.py -->\n```python\n(.*?)```", text, re.S)
    assert code, "docs/tasks.md lost its worked example"
    folder = tmp / "own"
    folder.mkdir()
    (folder / "yesno_task.py").write_text(code.group(1))
    return folder


def _rows(n: int, seed: int) -> list[dict]:
    """The tiny sentiment texts as passages; the question asks whether the text is good or bad."""
    rng = random.Random(seed)
    out = []
    for r in tiny.sentiment_rows(n, seed):
        asks_good = rng.random() < 0.5
        out.append(
            {"passage": r["text"], "question": "good" if asks_good else "bad", "answer": bool(r["label"]) == asks_good}
        )
    return out


def test_the_documented_own_task_trains_and_reports_its_metric(
    tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(_example(tmp_path)))
    data = tiny.classification_config(tmp_path, bert_dir, max_steps=150, eval_every=50)
    tiny.write_jsonl(tmp_path / "data" / "train.jsonl", _rows(320, 1))
    tiny.write_jsonl(tmp_path / "data" / "val.jsonl", _rows(80, 2))
    data["task"] = "yesno_task:YesNo"
    cfg = config_from_dict(data, base_dir=tmp_path)
    result = run_job(cfg)
    assert set(result.metrics) == {"accuracy", "eval_loss"}
    assert result.history[-1]["accuracy"] > result.history[0]["accuracy"]  # it learns the task
    assert result.history[-1]["accuracy"] >= 0.7, result.history  # answer = (sentiment == question): an XOR
    saved = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    assert saved["config"]["task"] == "yesno_task:YesNo"
    sys.modules.pop("yesno_task", None)


def test_an_own_task_lacking_a_method_or_module_exits_2(
    tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    folder = _example(tmp_path)
    source = (folder / "yesno_task.py").read_text()
    (folder / "half_task.py").write_text(source.replace("def tokenize(", "def tokenise("))
    monkeypatch.syspath_prepend(str(folder))
    data = tiny.classification_config(tmp_path, bert_dir)
    data["task"] = "yesno_task:YesNo"
    path = tiny.write_config(tmp_path / "train.yaml", data)
    assert main(["train", str(path)]) == 2  # the example's own check: sentiment rows have no passage
    err = capsys.readouterr().err
    assert (
        "train.yaml: data.train: '" in err
        and "train.jsonl' row 1 (and 239 more): expected str in 'passage', found null" in err
    )
    data["task"] = "half_task:YesNo"
    path = tiny.write_config(tmp_path / "train.yaml", data)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        "train.yaml: task: half_task:YesNo: expected a method tokenize() (every task implements load_examples, "
        "tokenize, load_model), found none" in err
    )
    data["task"] = "not_there_task:YesNo"
    path = tiny.write_config(tmp_path / "train.yaml", data)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        "train.yaml: task: cannot import module 'not_there_task' of task 'not_there_task:YesNo': "
        "ModuleNotFoundError" in err
    )
    assert "Traceback" not in err and not (tmp_path / "out" / "metrics.json").exists()
