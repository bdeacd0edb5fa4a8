"""The fine-tuning job on tiny random models: it learns, reports, stops when told, and repeats exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import tiny

from search.cli import main
from trainer import config_from_dict, prepare, run_job


def _cfg(data: dict, tmp: Path):
    return config_from_dict(data, source="test", base_dir=tmp)


def test_classification_learns_and_writes_metrics(tmp_path: Path, bert_dir: Path) -> None:
    cfg = _cfg(tiny.classification_config(tmp_path, bert_dir, max_steps=40), tmp_path)
    result = run_job(cfg)
    assert set(result.metrics) == {"accuracy", "f1_macro", "eval_loss"}
    assert [h["step"] for h in result.history] == [10, 20, 30, 40]
    assert result.metrics["accuracy"] >= 0.75  # chance is 0.5; the signal word decides the label
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["metrics"] == result.metrics
    assert saved["config"]["train"]["max_steps"] == 40


def test_same_config_twice_gives_identical_metrics(tmp_path: Path, bert_dir: Path) -> None:
    data = tiny.classification_config(tmp_path, bert_dir, max_steps=15, eval_every=5)
    data["peft"] = {"method": "lora", "r": 4}
    first = run_job(_cfg(data, tmp_path)).history
    second = run_job(_cfg(data, tmp_path)).history
    assert first == second


def test_final_step_is_evaluated_when_not_a_multiple_of_eval_every(tmp_path: Path, bert_dir: Path) -> None:
    cfg = _cfg(tiny.classification_config(tmp_path, bert_dir, max_steps=13, eval_every=5), tmp_path)
    result = run_job(cfg)
    assert [h["step"] for h in result.history] == [5, 10, 13]


def test_reporter_stops_the_run(tmp_path: Path, bert_dir: Path) -> None:
    class StopAtSecond:
        calls: ClassVar[list[int]] = []

        def report(self, step: int, metrics: dict) -> bool:
            self.calls.append(step)
            return len(self.calls) >= 2

    reporter = StopAtSecond()
    result = run_job(_cfg(tiny.classification_config(tmp_path, bert_dir, max_steps=50), tmp_path), reporter)
    assert result.stopped
    assert result.step == 20 and reporter.calls == [10, 20]


def test_string_labels_and_held_out_validation(tmp_path: Path, bert_dir: Path) -> None:
    tiny.write_jsonl(tmp_path / "named.jsonl", tiny.sentiment_rows(200, seed=3, string_labels=True))
    data = tiny.classification_config(tmp_path, bert_dir, max_steps=10)
    data["data"] = {"train": "named.jsonl", "validation_fraction": 0.25}
    prep = prepare(_cfg(data, tmp_path))
    assert prep.examples.labels == ["negative", "positive"]
    assert len(prep.validation) == 50 and len(prep.train) == 150


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sft_lora_lowers_loss(tmp_path: Path, arch: str, request: pytest.FixtureRequest) -> None:
    model_dir = request.getfixturevalue(f"{arch}_dir")
    cfg = _cfg(tiny.sft_config(tmp_path, model_dir, max_steps=30, learning_rate=1e-2), tmp_path)
    result = run_job(cfg)
    assert set(result.metrics) == {"eval_loss", "perplexity"}
    assert result.history[-1]["eval_loss"] < result.history[0]["eval_loss"]


def test_sft_masks_prompt_tokens(tmp_path: Path, gpt2_dir: Path) -> None:
    prep = prepare(_cfg(tiny.sft_config(tmp_path, gpt2_dir), tmp_path))
    ex = prep.train[0]
    prompt_len = len(prep.tokenizer(prep.examples.train[0]["prompt"])["input_ids"])
    assert ex["labels"][:prompt_len] == [-100] * prompt_len
    assert all(x != -100 for x in ex["labels"][prompt_len:])
    assert ex["labels"][-1] == prep.tokenizer.eos_token_id


def test_instruction_columns_are_formatted(tmp_path: Path, gpt2_dir: Path) -> None:
    rows = [{"instruction": "add 1 and 2", "input": "", "output": "3"}] * 20
    tiny.write_jsonl(tmp_path / "ins.jsonl", rows)
    data = tiny.sft_config(tmp_path, gpt2_dir)
    data["data"] = {"train": "ins.jsonl", "validation": "ins.jsonl"}
    prep = prepare(_cfg(data, tmp_path))
    assert prep.examples.sft_format == "instruction"
    assert prep.examples.train[0]["prompt"].startswith("### Instruction:\nadd 1 and 2")


@pytest.mark.parametrize(
    "arch,expected",
    [("bert", {"query", "key", "value"}), ("gpt2", {"c_attn"}), ("llama", {"q_proj", "k_proj", "v_proj", "o_proj"})],
)
def test_auto_target_modules(tmp_path: Path, arch: str, expected: set, request: pytest.FixtureRequest) -> None:
    from trainer._model import build_model

    model_dir = request.getfixturevalue(f"{arch}_dir")
    make = tiny.classification_config if arch == "bert" else tiny.sft_config
    data = make(tmp_path, model_dir)
    data["peft"] = {"method": "lora", "r": 4}
    cfg = _cfg(data, tmp_path)
    prep = prepare(cfg)
    model = build_model(cfg, prep.location, prep.tokenizer, prep.examples.num_labels, prep.examples.labels)
    assert set(model.peft_config["default"].target_modules) == expected


def test_cli_train_saves_adapter(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    data = tiny.classification_config(tmp_path, bert_dir, max_steps=10)
    data["peft"] = {"method": "lora", "r": 4}
    data["save"] = "adapter"
    path = tiny.write_config(tmp_path / "train.yaml", data)
    assert main(["train", str(path), "--set", "train.max_steps=12"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "final metrics (step 12/12" in out
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "out" / "config.yaml").exists()


def test_tokenized_data_is_cached_by_fingerprint(tmp_path: Path, bert_dir: Path) -> None:
    from trainer import job

    data = tiny.classification_config(tmp_path, bert_dir)
    cfg = _cfg(data, tmp_path)
    first = prepare(cfg, cache_dir=tmp_path / "cache")
    files = list((tmp_path / "cache").glob("prepared-*.pkl"))
    assert len(files) == 1
    job._PREPARED.clear()  # a new worker process: read back from disk, no tokenizing
    again = prepare(cfg, cache_dir=tmp_path / "cache")
    assert again.train == first.train and again is not first
    data["train"]["max_length"] = 8  # another max_length is another fingerprint
    shorter = prepare(_cfg(data, tmp_path), cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("prepared-*.pkl"))) == 2
    assert max(len(r["input_ids"]) for r in shorter.train) <= 8


@pytest.mark.parametrize("content", [b"\x80\x04garbage", "dict", "old"], ids=["torn", "another-object", "old-layout"])
def test_a_cache_file_that_does_not_hold_prepared_data_is_rebuilt(tmp_path: Path, bert_dir: Path, content) -> None:
    """A torn file, a valid pickle of another object, or a Prepared of an older layout: discarded and rebuilt,
    said in one line, never a traceback; the rebuilt file is read back as usual."""
    import pickle

    from trainer import job

    cfg = _cfg(tiny.classification_config(tmp_path, bert_dir), tmp_path)
    first = prepare(cfg, cache_dir=tmp_path / "cache")
    [cached] = (tmp_path / "cache").glob("prepared-*.pkl")
    if content == "dict":
        content = pickle.dumps({"train": [1, 2]})
    elif content == "old":
        old = job.Prepared.__new__(job.Prepared)
        old.__dict__.update({k: v for k, v in vars(first).items() if k != "stats"})
        content = pickle.dumps(old)
    cached.write_bytes(content)
    job._PREPARED.clear()
    said: list[str] = []
    again = prepare(cfg, cache_dir=tmp_path / "cache", say=said.append)
    assert again.train == first.train and again.stats == first.stats
    assert len(said) == 1 and said[0].startswith(f"note: the tokenized-data cache {cached} cannot be used (")
    assert said[0].endswith("discarded, tokenizing again")
    job._PREPARED.clear()
    assert prepare(cfg, cache_dir=tmp_path / "cache", say=said.append).train == first.train and len(said) == 1


def test_timing_is_reported_while_running(tmp_path: Path, bert_dir: Path) -> None:
    seen: list[dict] = []
    timing: dict = {}

    class Watch:
        def report(self, step: int, metrics: dict) -> bool:
            seen.append(dict(timing))
            return False

    run_job(_cfg(tiny.classification_config(tmp_path, bert_dir, max_steps=20), tmp_path), Watch(), timing=timing)
    assert seen[0]["first_step_at"] >= seen[0]["started_at"]
    assert seen[0]["train"] > 0 and seen[0]["eval"] > 0  # this evaluation's own time included
    assert seen[1]["train"] > seen[0]["train"]
