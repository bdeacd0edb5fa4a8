"""`sftune data` and the counted warnings: exact counts on real data with planted duplicates, leakage, imbalance."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import tiny
from conftest import SHARED_DATA

from search.cli import main
from search.data_report import data_report, short_form
from trainer import config_from_dict, prepare, run_job

TREC = SHARED_DATA / "trec6"


def _trec_rows() -> list[dict]:
    seen, out = set(), []
    for line in (TREC / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["text"] not in seen:
            seen.add(row["text"])
            out.append(row)
    return out


@pytest.mark.skipif(not TREC.exists(), reason="shared data not present")
def test_planted_duplicates_leakage_and_imbalance_are_counted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = _trec_rows()[:400]
    conflicting = {"text": base[5]["text"], "label": (base[5]["label"] + 1) % 6}
    train = base[:300] + base[:5] + [{"text": "   ", "label": 1}, conflicting]
    validation = base[300:380] + base[10:13]
    test = base[380:400] + base[300:302] + base[20:24]
    for name, rows in (("train", train), ("val", validation), ("test", test)):
        tiny.write_jsonl(tmp_path / f"{name}.jsonl", rows)
    names = [json.loads((TREC / "labels.json").read_text())[str(i)] for i in range(6)]
    config = {
        "model": "minilm-l6",
        "data": {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl", "labels": names},
        "train": {"max_length": 12},
        "output_dir": str(tmp_path / "out"),
    }
    path = tiny.write_config(tmp_path / "train.yaml", config)
    assert main(["data", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)

    tr, va, te = (report["splits"][s] for s in ("train", "validation", "test"))
    assert (tr["rows"], va["rows"], te["rows"]) == (len(train), len(validation), len(test))
    assert tr["duplicates"]["rows"] == 6 and tr["duplicates"]["texts"] == 6
    assert tr["duplicates"]["conflicting_labels"] == 1
    assert va["duplicates"]["rows"] == 0 and te["duplicates"]["rows"] == 0
    assert tr["empty"] == 1 and va["empty"] == 0
    assert report["leakage"]["validation_in_train"]["rows"] == 3
    assert report["leakage"]["test_in_train"]["rows"] == 4
    assert report["leakage"]["test_in_validation"]["rows"] == 2
    assert repr(base[10]["text"]) in report["leakage"]["validation_in_train"]["examples"][0]
    for split, rows in (("train", train), ("validation", validation), ("test", test)):
        counts = Counter(r["label"] for r in rows)
        assert report["splits"][split]["labels"] == {n: counts.get(i, 0) for i, n in enumerate(names)}
        for i, name in enumerate(names):
            absent = f"{split}: class {name!r} is absent"
            assert (absent in report["warnings"]) == (counts.get(i, 0) == 0)
    abbr = Counter(r["label"] for r in train)[0] / len(train)
    assert abbr < 0.05  # TREC's ABBR class is rare
    assert any(
        w.startswith("train: class 'ABBR' is 1.") or w.startswith("train: class 'ABBR' is 2.")
        for w in report["warnings"]
    ), report["warnings"]
    assert any("train.class_weights: balanced" in r and "f1_macro" in r for r in report["recommendations"])
    assert any(w.startswith("leakage: 3 of 83 validation rows also appear in train") for w in report["warnings"])
    over = sum(r["tokens"]["over_max_length"] for r in report["splits"].values())
    assert over == sum(r["truncated"] for r in report["splits"].values()) > 0
    assert report["warning_counts"]["train.truncated"] == tr["truncated"]
    rare = sum(1 for n in tr["labels"].values() if 0 < n / tr["rows"] < 0.05)
    assert report["warning_counts"]["train.rare_classes"] == rare >= 1  # counted for the trial's record too
    assert report["has_test"] and not any("no test split" in r for r in report["recommendations"])
    lines = short_form(report).splitlines()
    assert 2 <= len(lines) <= 4 and "train 307 · validation 83 · test 26 rows" in lines[0]


def _sft_rows() -> dict[str, list[dict]]:
    fits = {"prompt": "add 1 and 2 :", "response": " 3"}  # 5 + 1 tokens + EOS
    long_prompt = {"prompt": "the movie was " * 5 + "add 1 and 2 :", "response": " 3"}  # 20 + 1 + EOS
    long_response = {"prompt": "add 1 and 2 :", "response": " " + " ".join(str(i % 10) for i in range(20))}
    exact = {"prompt": "add 1 and 2 :", "response": " " + " ".join(["7"] * 15)}  # 15 + EOS = max_length
    return {"train": [fits] * 3 + [long_prompt] * 2 + [long_response, exact], "val": [fits, long_prompt, long_response]}


def test_sft_rows_keep_their_response_and_lose_the_prompt_start(
    tmp_path: Path, gpt2_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = _sft_rows()
    for name, split in rows.items():
        tiny.write_jsonl(tmp_path / f"{name}.jsonl", split)
    data = tiny.sft_config(tmp_path, gpt2_dir, max_length=16)
    data["data"] = {"train": "train.jsonl", "validation": "val.jsonl"}
    cfg = config_from_dict(data, source="t", base_dir=tmp_path)
    prep = prepare(cfg)
    assert prep.warnings == {
        "train.truncated": 3,
        "train.dropped": 1,
        "validation.truncated": 1,
        "validation.dropped": 1,
    }
    assert prep.stats["train"]["rows"] == 7 and len(prep.train) == 6 and len(prep.validation) == 2
    tok = prep.tokenizer
    cut = prep.train[3]  # the first long-prompt row
    assert len(cut["input_ids"]) == 16
    assert cut["input_ids"][-2:] == [tok.convert_tokens_to_ids("3"), tok.eos_token_id]
    assert cut["labels"] == [-100] * 14 + cut["input_ids"][-2:]
    assert tok.decode(cut["input_ids"][:14]).endswith("add 1 and 2 :")
    assert prep.train[5]["labels"] == prep.train[5]["input_ids"]  # no room for the prompt: the response, whole

    report = data_report(cfg, "t", prepared=prep)
    assert report["splits"]["train"]["dropped"] == 1 and report["splits"]["train"]["truncated"] == 3
    assert report["splits"]["validation"]["dropped"] == 1
    assert any(
        "train: 1 of 7 rows are dropped: their response alone is longer than max_length=16" in w
        for w in report["warnings"]
    )
    assert "dropped train 1, validation 1" in short_form(report)

    path = tiny.write_config(tmp_path / "train.yaml", {**data, "train": {**data["train"], "max_steps": 2}})
    assert main(["train", str(path)]) == 0
    out = capsys.readouterr().out
    assert "warning: train: 3 of 7 rows are longer than max_length=16 tokens: their prompt loses its start" in out
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["data_warnings"]["validation.dropped"] == 1
    assert main(["data", str(path)]) == 0
    text = capsys.readouterr().out
    assert "4 rows over max_length 16: 3 keep their response and lose the start of their prompt, 1 are dropped" in text


def test_balanced_class_weights() -> None:
    import torch

    from trainer._loss import balanced_weights, class_weighted_loss

    assert balanced_weights([0, 0, 0, 1], 3) == [4 / 6, 2.0, 0.0]
    loss = class_weighted_loss([0.5, 2.0])
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    plain = torch.nn.functional.cross_entropy(logits, labels)
    per_row = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    weighted = loss({"logits": logits}, labels, num_items_in_batch=3)
    assert torch.isclose(weighted, (per_row * torch.tensor([0.5, 2.0, 2.0])).sum() / 3)
    assert not torch.isclose(weighted, plain)
    with torch.no_grad():  # evaluation: the plain loss, comparable across trials
        assert torch.isclose(loss({"logits": logits}, labels), plain)


def test_class_weights_change_training_on_imbalanced_data(tmp_path: Path, bert_dir: Path) -> None:
    rows = tiny.sentiment_rows(200, seed=4)
    imbalanced = [r for r in rows if r["label"] == 0] + [r for r in rows if r["label"] == 1][:12]
    tiny.write_jsonl(tmp_path / "imb.jsonl", imbalanced)
    data = tiny.classification_config(tmp_path, bert_dir, max_steps=6, eval_every=3)
    data["data"]["train"] = "imb.jsonl"
    plain = run_job(config_from_dict(data, base_dir=tmp_path))
    data["train"]["class_weights"] = "balanced"
    weighted = run_job(config_from_dict(data, base_dir=tmp_path))
    assert weighted.history != plain.history
    report = data_report(config_from_dict(data, base_dir=tmp_path))
    assert report["imbalance_ratio"] > 3 and "is set" in report["recommendations"][0]
