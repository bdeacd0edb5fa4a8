"""task: token-classification: words with a tag each, first sub-word labelled, entity P/R/F1 by seqeval's rules.

Trained on a tagging task derived from real text (the capitalised names of TREC-6 questions, see
tests/data/trec6_names/SOURCE.md): no NER corpus can be had here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny

from search.cli import main
from trainer import config_from_dict, prepare, run_job
from trainer.tasks.token_classification import entities, tagging_metrics


@pytest.fixture(scope="module")
def char_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.make_char_model(tmp_path_factory.mktemp("char-bert"))


def test_entities_follow_seqeval_rules() -> None:
    assert entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    assert entities(["I-PER", "I-PER", "B-PER"]) == [("PER", 0, 2), ("PER", 2, 3)]  # I- after O starts one
    assert entities(["B-PER", "I-LOC", "I-LOC"]) == [("PER", 0, 1), ("LOC", 1, 3)]  # a type change starts one
    assert entities(["PER", "PER", "O", "LOC", "PER"], "plain") == [("PER", 0, 2), ("LOC", 3, 4), ("PER", 4, 5)]
    m = tagging_metrics(
        [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]], [["B-PER", "O", "O", "B-LOC"], ["O", "B-ORG"]]
    )
    # true PER(0,2) LOC ORG; predicted PER(0,1) LOC ORG: 2 of 3 right either way
    assert m["entity_precision"] == pytest.approx(2 / 3) and m["entity_recall"] == pytest.approx(2 / 3)
    assert m["entity_f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(5 / 6)
    assert tagging_metrics([["O", "O"]], [["O", "O"]])["entity_f1"] == 0.0


def test_first_sub_word_carries_the_tag(tmp_path: Path, char_bert: Path) -> None:
    cfg = config_from_dict(tiny.tagging_config(tmp_path, char_bert), base_dir=tmp_path)
    prep = prepare(cfg)
    ex, row = prep.examples.train[0], prep.train[0]
    assert ex["tokens"] == ["How", "did", "serfdom", "develop", "in", "and", "then", "leave", "Russia", "?"]
    labelled = [lab for lab in row["labels"] if lab != -100]
    assert labelled == ex["tag_ids"]  # one label per word, in order
    assert len(row["labels"]) == sum(len(w) for w in ex["tokens"])  # a character per sub-word, the rest -100
    assert row["labels"][
        row["input_ids"].index(prep.tokenizer.convert_tokens_to_ids("R"))
    ] == prep.examples.labels.index("B-NAME")
    assert prep.stats["train"]["truncated"] >= 1 and prep.stats["train"]["words_cut"] >= 1


@pytest.mark.parametrize("scheme", ["bio", "plain"])
def test_tagging_names_in_trec_questions_is_learned(tmp_path: Path, char_bert: Path, scheme: str) -> None:
    cfg = config_from_dict(
        tiny.tagging_config(tmp_path, char_bert, scheme, max_steps=60, eval_every=10), base_dir=tmp_path
    )
    result = run_job(cfg)
    first, last = result.history[0], result.history[-1]
    assert set(result.metrics) == {"entity_f1", "entity_precision", "entity_recall", "accuracy", "eval_loss"}
    # plain tags need the first character only; BIO's B/I also needs the word before (harder for 2 tiny layers)
    floor = 0.45 if scheme == "bio" else 0.9
    assert last["entity_f1"] > first["entity_f1"] and last["entity_f1"] > floor, result.history
    assert last["accuracy"] > 0.95


def test_bad_tagging_input_exits_2(tmp_path: Path, char_bert: Path, capsys: pytest.CaptureFixture) -> None:
    data = tiny.tagging_config(tmp_path, char_bert)
    rows = tiny.tagging_rows("questions.jsonl")[:30]
    rows[3]["tags"] = rows[3]["tags"][:-1]
    tiny.write_jsonl(tmp_path / "data" / "tag_train.jsonl", rows)
    err = tiny.refused_train(tmp_path, data, capsys)
    n = len(rows[3]["tokens"])
    assert "train.yaml: task_options.tags_column: train row 4 of '" in err
    assert f"tag_train.jsonl': expected one tag per word, found {n} words in 'tokens' and {n - 1} tags in 'tags'" in err
    rows[3] = {"tokens": "Who is he ?", "tags": ["O"] * 4}
    tiny.write_jsonl(tmp_path / "data" / "tag_train.jsonl", rows)
    err = tiny.refused_train(tmp_path, data, capsys)
    assert (
        "task_options.tokens_column: train row 4 of" in err
        and "expected a list of non-empty words, found 'Who is he ?' (str)" in err
    )
    plain = tiny.tagging_rows("questions.jsonl", "plain")[:30]
    tiny.write_jsonl(tmp_path / "data" / "tag_train.jsonl", plain)
    err = tiny.refused_train(tmp_path, data, capsys)
    assert "task_options.tag_scheme: expected BIO tags (O, B-X, I-X) in" in err and "found 'NAME'" in err


def test_data_report_counts_entities(tmp_path: Path, char_bert: Path, capsys: pytest.CaptureFixture) -> None:
    path = tiny.write_config(tmp_path / "train.yaml", tiny.tagging_config(tmp_path, char_bert))
    assert main(["data", str(path)]) == 0
    out = capsys.readouterr().out
    rows = tiny.tagging_rows("questions.jsonl")
    n = sum(t == "B-NAME" for r in rows for t in r["tags"])
    assert f"entities: NAME {n}" in out and "labels: O 400" in out
