"""Generation-based metrics: answers extracted and scored as documented, reported by SFT runs, bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny

from trainer import config_from_dict, run_job
from trainer.generation.scores import chrf, exact_match, extract, rouge_l


@pytest.mark.parametrize(
    "text,how,answer",
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "gsm8k", "72"),
        ("so the total is\n#### 1,000.50 dollars", "gsm8k", "1000.5"),
        ("no marker, 12 then 13", "gsm8k", None),
        ("first 3, then $4.0 and finally +5", "last_number", "5"),
        ("It costs $4.00.", "last_number", "4"),
        ("nothing numeric", "last_number", None),
        ("  The   Answer is\tParis ", "whole", "the answer is paris"),
        ("Answer: (B) because", r"regex:\(([A-D])\)", "b"),
        ("no letter here", r"regex:\(([A-D])\)", None),
    ],
)
def test_extraction(text: str, how: str, answer: str | None) -> None:
    assert extract(text, how) == answer


def test_scores_on_rows_whose_answers_are_known() -> None:
    refs = ["She has 5 apples.\n#### 5", "#### 12", "#### 7"]
    preds = ["5 apples, so\n#### 5", "#### 12.0", "I think 7"]  # the third has no `####`: wrong
    assert exact_match(preds, refs, "gsm8k") == pytest.approx(2 / 3)
    assert exact_match(preds, refs, "last_number") == pytest.approx(1.0)
    # ROUGE-L F of "the cat sat" against "the cat sat down": LCS 3, precision 1, recall 3/4 -> 6/7
    assert rouge_l(["the cat sat", "a b"], ["the cat sat down", "c d"]) == pytest.approx((6 / 7 + 0) / 2)
    assert chrf(["the cat"], ["the cat"]) == pytest.approx(100.0)
    assert 0 < chrf(["the cat sat"], ["the cat sat down"]) < 100


METRICS_PY = """
def score(predictions, references, rows):
    return {"answer_length": sum(len(p) for p in predictions) / max(len(predictions), 1)}
"""


def _sft(tmp: Path, model: Path, **eval_: object) -> dict:
    data = tiny.sft_config(tmp, model, max_steps=30, eval_every=10, learning_rate=1e-2)
    data["peft"] = {"method": "full"}
    data["eval"] = {"max_new_tokens": 3, "samples": 12, "show": 2, **eval_}
    return data


def test_an_sft_run_reports_generation_metrics_samples_and_their_time(tmp_path: Path, llama_dir: Path) -> None:
    (tmp_path / "mymetrics.py").write_text(METRICS_PY)
    data = _sft(
        tmp_path,
        llama_dir,
        metrics=["exact_match", "rouge_l", "chrf"],
        extract="last_number",
        function="mymetrics.py:score",
        directions={"answer_length": "minimize"},
        every=2,
    )
    lines: list[str] = []
    result = run_job(config_from_dict(data, base_dir=tmp_path), progress=lines.append)
    generated = ["exact_match", "rouge_l", "chrf", "answer_length"]
    # evaluations at steps 10, 20, 30: every 2nd generates, and the last always
    assert [all(m in h for m in generated) for h in result.history] == [False, True, True]
    assert all("generate_seconds" in h for h in result.history[1:])
    assert set(generated) <= set(result.metrics) and "generate_seconds" not in result.metrics
    assert [g["step"] for g in result.generations] == [20, 30]
    assert all(
        len(g["samples"]) == 2 and set(g["samples"][0]) == {"prompt", "reference", "output"} for g in result.generations
    )
    assert any(line.strip().startswith("sample 1:") for line in lines)
    kept = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert kept["generations"][-1]["samples"][0]["prompt"].startswith("add ")


def test_a_study_can_optimise_a_generation_metric(tmp_path: Path, llama_dir: Path) -> None:
    from search.config import load_study

    base = _sft(tmp_path, llama_dir, metrics=["exact_match"], extract="last_number")
    path = tiny.write_config(
        tmp_path / "study.yaml",
        {
            "name": "gen",
            "objective": [{"metric": "exact_match"}, {"metric": "eval_loss"}],
            "base": base,
            "space": {"train.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2}},
        },
    )
    cfg = load_study(path)
    assert cfg.metrics == ["exact_match", "eval_loss"] and cfg.directions == ["maximize", "minimize"]


def test_a_generation_metric_on_classification_is_refused(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tiny.classification_config(tmp_path, bert_dir)
    data["eval"] = {"metrics": ["exact_match"]}
    err = tiny.refused_train(tmp_path, data, capsys)
    assert "train.yaml: eval.metrics: generation metrics need a task whose model writes text (sft)" in err


def test_an_extraction_that_finds_no_answer_says_on_how_many_rows(
    tmp_path: Path, gpt2_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    err = tiny.refused_train(tmp_path, _sft(tmp_path, gpt2_dir, metrics=["exact_match"], extract="gsm8k"), capsys)
    assert "eval.extract: gsm8k finds no answer in 40 of 40 validation references (the first: row 1" in err


@pytest.mark.parametrize(
    "code,ref,expected",
    [
        (None, "nomodule_here:score", "eval.function: cannot import 'nomodule_here:score': ModuleNotFoundError"),
        (
            "def score(predictions):\n    return {}\n",
            "m.py:score",
            "must take (predictions, references, rows); found score(predictions)",
        ),
        (
            "def score(p, r, rows):\n    return {'answer_length': 'high'}\n",
            "m.py:score",
            "failed: ValueError: answer_length: expected a finite number, found 'high'",
        ),
        (
            "def score(p, r, rows):\n    return {'other': 1.0}\n",
            "m.py:score",
            "expected the metrics declared in eval.directions (answer_length), found other",
        ),
    ],
)
def test_a_user_metric_that_cannot_work_is_refused(
    tmp_path: Path, gpt2_dir: Path, capsys: pytest.CaptureFixture, code: str | None, ref: str, expected: str
) -> None:
    if code:
        (tmp_path / "m.py").write_text(code)
    data = _sft(tmp_path, gpt2_dir, function=ref, directions={"answer_length": "minimize"})
    assert expected in tiny.refused_train(tmp_path, data, capsys)


def test_eval_fields_out_of_range_are_refused(tmp_path: Path, gpt2_dir: Path, capsys: pytest.CaptureFixture) -> None:
    data = _sft(tmp_path, gpt2_dir, metrics=["exact_mach"], max_new_tokens=0, extract="first_number")
    err = tiny.refused_train(tmp_path, data, capsys)
    assert "eval.max_new_tokens: must be >= 1, found 0" in err
    assert "eval.metrics: expected metrics among exact_match, rouge_l, chrf, found 'exact_mach'" in err
    assert "eval.extract: expected one of whole, gsm8k, last_number, regex:<pattern>, found 'first_number'" in err


def test_a_generation_objective_without_eval_metrics_says_where_to_ask(tmp_path: Path, llama_dir: Path) -> None:
    from search.config import load_study
    from trainer import ConfigError

    path = tiny.write_config(
        tmp_path / "study.yaml",
        {
            "name": "gen",
            "objective": {"metric": "exact_match"},
            "base": _sft(tmp_path, llama_dir),
            "space": {"train.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2}},
        },
    )
    with pytest.raises(ConfigError) as caught:
        load_study(path)
    assert (
        "objective.metric: task sft reports eval_loss, perplexity; found 'exact_match' (generation metrics "
        "such as exact_match are asked for in the base config's eval.metrics)" in caught.value.render()
    )


def test_a_chat_is_generated_for_with_the_template_it_was_trained_with(tmp_path: Path, llama_dir: Path) -> None:
    from trainer import prepare
    from trainer.generation import Generator
    from trainer.tasks import get_task

    chats = [
        {"messages": [{"role": "user", "content": f"add {a} and 2 :"}, {"role": "assistant", "content": f" {a + 2}"}]}
        for a in range(8)
    ]
    tiny.write_jsonl(tmp_path / "chats.jsonl", chats)
    data = _sft(tmp_path, llama_dir, metrics=["exact_match"], extract="last_number")
    data["data"] = {"train": "chats.jsonl", "validation": "chats.jsonl", "chat_template": "chatml"}
    cfg = config_from_dict(data, base_dir=tmp_path)
    prep = prepare(cfg)
    generator = Generator(cfg, get_task("sft"), prep.examples.validation, prep.tokenizer, prep.examples.options)
    assert generator.prompts[0].endswith("<|im_start|>assistant\n") and "add 0 and 2 :" in generator.prompts[0]
    assert generator.references[0] == " 2"
