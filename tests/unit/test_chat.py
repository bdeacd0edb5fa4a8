"""Chat data trained as chat: every assistant turn learned and nothing else, with the template chosen."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import tiny
from conftest import SHARED_DATA

from search.cli import main
from trainer import _chat, config_from_dict, prepare, run_job
from trainer.tasks.sft import sft_with_stats

SELF_INSTRUCT = SHARED_DATA / "self_instruct" / "seed_tasks.jsonl"
"""Self-Instruct's 175 human-written seed tasks (Apache-2.0; see its SOURCE.md), usable as training data."""
needs_data = pytest.mark.skipif(not SELF_INSTRUCT.exists(), reason="shared data not present")

OWN = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""A tokenizer's own template (Zephyr's shape): it writes the BOS token and ends each assistant turn with EOS."""
FILE = (
    "{% for m in messages %}{{ m['role'] | upper + ': ' + m['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT: ' }}{% endif %}"
)
"""A template of a user's own, in a Jinja file: each assistant turn ends with a newline."""
END = {"chatml": "<|im_end|>", "alpaca": "</s>", "tokenizer": "</s>\n", "file": "\n"}
"""What each template writes after an assistant's content, learned with it."""


def _seed_rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in SELF_INSTRUCT.read_text().splitlines()[:20]]


def _ask(row: dict[str, str]) -> str:
    return row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")


def _chats(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Two instruction/output pairs as one user/assistant/user/assistant chat; every other one with a system
    message."""
    out = []
    for k in range(0, len(rows) - 1, 2):
        a, b = rows[k], rows[k + 1]
        msgs = [{"role": "system", "content": "You are a helpful assistant."}] if k % 4 == 0 else []
        msgs += [
            {"role": "user", "content": _ask(a)},
            {"role": "assistant", "content": a["output"]},
            {"role": "user", "content": _ask(b)},
            {"role": "assistant", "content": b["output"]},
        ]
        out.append({"messages": msgs})
    return out


@pytest.fixture(scope="module")
def bpe() -> Any:
    """A byte-level BPE tokenizer (it decodes to the exact text) trained on the sample, with a BOS."""
    if not SELF_INSTRUCT.exists():
        pytest.skip("shared data not present")
    texts = [f"{_ask(r)}\n{r['output']}" for r in _seed_rows()]
    return tiny.make_bpe_tokenizer(texts)


def _runs(row: dict[str, list[int]]) -> list[list[int]]:
    """The labelled tokens of a row as runs of consecutive positions; each label equals its input id."""
    runs: list[list[int]] = []
    prev = -100
    for token, label in zip(row["input_ids"], row["labels"], strict=True):
        assert label in (-100, token)
        if label != -100:
            if prev == -100:
                runs.append([])
            runs[-1].append(token)
        prev = label
    return runs


def _template(name: str, tmp: Path) -> _chat.ChatTemplate | str:
    if name == "file":
        (tmp / "mine.jinja").write_text(FILE)
        return _chat.load_setting(str(tmp / "mine.jinja"))
    return "auto" if name == "tokenizer" else _chat.load_setting(name)


@needs_data
@pytest.mark.parametrize("name", ["chatml", "alpaca", "tokenizer", "file"])
def test_every_assistant_turn_is_learned_and_nothing_else(name: str, bpe: Any, tmp_path: Path) -> None:
    chats = _chats(_seed_rows())
    tok = bpe
    if name == "tokenizer":
        tok = tiny.make_bpe_tokenizer([f"{_ask(r)}\n{r['output']}" for r in _seed_rows()], chat_template=OWN)
    template = _template(name, tmp_path)
    rows, stats = sft_with_stats(chats, tok, 1024, {"chat_template": template, "format": "messages"})
    assert len(rows) == len(chats) == 10 and stats["truncated"] == stats["dropped"] == 0
    assert stats["template"]["name"] == name
    for chat, row in zip(chats, rows, strict=True):
        msgs = chat["messages"]
        answers = [m["content"] for m in msgs if m["role"] == "assistant"]
        wanted = [a + END[name] for a in answers]
        if not wanted[-1].rstrip("\n").endswith("</s>"):
            wanted[-1] += "</s>"  # an EOS after the last turn when the template does not end turns with one
        assert [tok.decode(r) for r in _runs(row)] == wanted
        whole = tok.decode(row["input_ids"])
        assert whole.startswith("<s>") and whole.count("<s>") == 1  # a BOS, written by the template or added
        unlearned = tok.decode([t for t, y in zip(row["input_ids"], row["labels"], strict=True) if y == -100])
        for m in msgs:
            if m["role"] != "assistant":
                assert m["content"] in unlearned  # every system and user token is masked
                assert m["content"] not in "".join(wanted)


@needs_data
def test_train_on_prompt_learns_every_token(bpe: Any) -> None:
    rows = [*_chats(_seed_rows())[:3], {"prompt": "Q: two plus two?", "response": " 4"}]
    plain, _ = sft_with_stats(rows, bpe, 1024, {"chat_template": "auto"})
    whole, _ = sft_with_stats(rows, bpe, 1024, {"chat_template": "auto", "train_on_prompt": True})
    for a, b in zip(plain, whole, strict=True):
        assert a["input_ids"] == b["input_ids"] and b["labels"] == b["input_ids"]
        assert -100 in a["labels"]


def test_prompt_response_rows_keep_their_behaviour(gpt2_dir: Path) -> None:
    from trainer.tasks import get_task

    tok = get_task("sft").load_processor(str(gpt2_dir))
    rows = [{"prompt": "add 1 and 2 : add 3 and 4 : add 5 and 6 :", "response": " 3 7 11"}]
    out, stats = sft_with_stats(rows, tok, 8)
    prompt, response = tok(rows[0]["prompt"])["input_ids"], tok(rows[0]["response"])["input_ids"]
    assert out[0]["input_ids"] == prompt[-4:] + response + [tok.eos_token_id]  # the prompt's start is cut
    assert out[0]["labels"] == [-100] * 4 + response + [tok.eos_token_id]
    assert stats["truncated"] == stats["prompt_cut"] == 1 and stats["template"] == {
        "name": "none",
        "format": "prompt_response",
    }


def test_a_long_conversation_loses_its_earliest_exchanges_first(gpt2_dir: Path) -> None:
    from trainer.tasks import get_task

    tok = get_task("sft").load_processor(str(gpt2_dir))
    system = {"role": "system", "content": "add"}
    turns = [
        {"role": r, "content": c}
        for r, c in (
            ("user", "add 1 and 2 :"),
            ("assistant", "3"),
            ("user", "add 2 and 2 :"),
            ("assistant", "4"),
            ("user", "add 5 and 5 :"),
            ("assistant", "10"),
        )
    ]
    chatml = _chat.load_setting("chatml")
    options = {"chat_template": chatml, "format": "messages"}
    full, _ = sft_with_stats([{"messages": [system, *turns]}], tok, 128, options)
    last_two, _ = sft_with_stats([{"messages": [system, *turns[2:]]}], tok, 128, options)
    n = len(last_two[0]["input_ids"])
    assert len(full[0]["input_ids"]) > n
    out, stats = sft_with_stats([{"messages": [system, *turns]}], tok, n, options)
    assert out == last_two  # the first exchange went, the system message stayed
    assert stats["truncated"] == stats["turns_cut"] == 1 and stats["prompt_cut"] == stats["dropped"] == 0
    answer = len(tok("10<|im_end|>", add_special_tokens=False)["input_ids"]) + 1
    out, stats = sft_with_stats([{"messages": [system, *turns]}], tok, answer + 2, options)
    assert len(out[0]["input_ids"]) == answer + 2 and sum(y != -100 for y in out[0]["labels"]) == answer
    assert stats["truncated"] == stats["turns_cut"] == stats["prompt_cut"] == 1
    out, stats = sft_with_stats([{"messages": [system, *turns]}], tok, answer - 1, options)
    assert out == [] and stats["dropped"] == 1


def test_a_jinja_file_is_recorded_in_metrics_json(tmp_path: Path, gpt2_dir: Path) -> None:
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "mine.jinja").write_text(FILE)
    data = tiny.chat_config(tmp_path, gpt2_dir, chat_template="tpl/mine.jinja")
    cfg = config_from_dict(data, base_dir=tmp_path)
    assert cfg.data.chat_template == str(tmp_path / "tpl" / "mine.jinja")  # relative to the config's folder
    prep = prepare(cfg)
    row = prep.train[0]
    assert (
        prep.tokenizer.decode([t for t, y in zip(row["input_ids"], row["labels"], strict=True) if y != -100])
        == "0 0 [EOS]"
    )  # each answer (its newline is no token to a word-level tokenizer), then EOS
    result = run_job(cfg, prepared=prep)
    recorded = json.loads((tmp_path / "out" / "metrics.json").read_text())["template"]
    sha = hashlib.sha256(FILE.encode()).hexdigest()[:12]
    assert recorded == result.template == {"name": "file", "path": str(tmp_path / "tpl" / "mine.jinja"), "sha256": sha}


@pytest.mark.parametrize(("setting", "name"), [("auto", "chatml"), ("alpaca", "alpaca")])
def test_the_template_is_recorded_and_printed(
    tmp_path: Path, gpt2_dir: Path, capsys: pytest.CaptureFixture, setting: str, name: str
) -> None:
    path = tiny.write_config(tmp_path / "train.yaml", tiny.chat_config(tmp_path, gpt2_dir, chat_template=setting))
    assert main(["train", str(path)]) == 0
    assert f"prompt format: {name}\n" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["template"] == {"name": name}


def test_unknown_template_name_lists_the_known_ones(
    tmp_path: Path, gpt2_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    err = tiny.refused_train(tmp_path, tiny.chat_config(tmp_path, gpt2_dir, chat_template="chatlm"), capsys)
    assert (
        "train.yaml: data.chat_template: expected auto, chatml, alpaca or a path to a Jinja file (.jinja), "
        "found 'chatlm'; did you mean 'chatml'?"
    ) in err


def test_missing_template_file(tmp_path: Path, gpt2_dir: Path, capsys: pytest.CaptureFixture) -> None:
    err = tiny.refused_train(tmp_path, tiny.chat_config(tmp_path, gpt2_dir, chat_template="nope.jinja"), capsys)
    assert (
        f"train.yaml: data.chat_template: expected a Jinja template file, found no file at '{tmp_path / 'nope.jinja'}'"
    ) in err


def test_template_file_that_is_not_jinja(tmp_path: Path, gpt2_dir: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}{{ m['content'] }}")
    err = tiny.refused_train(tmp_path, tiny.chat_config(tmp_path, gpt2_dir, chat_template="bad.jinja"), capsys)
    assert "data.chat_template: " in err and "bad.jinja' is not a valid Jinja template: line 1" in err


@pytest.mark.parametrize(
    ("roles", "found"),
    [
        (
            ["user", "user", "assistant"],
            "expected roles to alternate user/assistant after an optional first system "
            "message, found 'user' at message 2 (roles ['user', 'user', 'assistant'])",
        ),
        (["assistant", "user", "assistant"], "found 'assistant' at message 1"),
        (["user", "system", "assistant"], "found 'system' at message 2"),
        (["system", "user"], "expected at least one assistant turn, found roles ['system', 'user']"),
        (["user", "assistant", "user"], "expected the last message to be the assistant's"),
        (
            ["user", "tool", "assistant"],
            "message 2: expected role system, user or assistant and text content, found role 'tool' (str)",
        ),
    ],
)
def test_chat_rows_whose_roles_do_not_alternate(
    tmp_path: Path, gpt2_dir: Path, capsys: pytest.CaptureFixture, roles: list[str], found: str
) -> None:
    data = tiny.chat_config(tmp_path, gpt2_dir)
    rows = [json.loads(line) for line in (tmp_path / "data" / "chat_val.jsonl").read_text().splitlines()]
    rows[2] = {"messages": [{"role": r, "content": "add 1 and 2 :"} for r in roles]}
    tiny.write_jsonl(tmp_path / "data" / "chat_val.jsonl", rows)
    err = tiny.refused_train(tmp_path, data, capsys)
    assert f"train.yaml: data: validation row 3 of '{tmp_path / 'data' / 'chat_val.jsonl'}': " in err
    assert found in err


@pytest.mark.parametrize(
    ("text", "found"),
    [
        (
            "{% for m in messages | reverse %}{{ m['content'] + '\n' }}{% endfor %}",
            "ValueError: the chat template does not render this conversation turn by turn",
        ),
        ("{{ raise_exception('no system messages here') }}", "TemplateError: no system messages here"),
    ],
)
def test_a_template_that_cannot_render_the_rows(
    tmp_path: Path, gpt2_dir: Path, capsys: pytest.CaptureFixture, text: str, found: str
) -> None:
    (tmp_path / "t.jinja").write_text(text)
    err = tiny.refused_train(tmp_path, tiny.chat_config(tmp_path, gpt2_dir, chat_template="t.jinja"), capsys)
    assert (
        f"train.yaml: data.chat_template: train data: template file {tmp_path / 't.jinja'} sha256:"
        f"{hashlib.sha256(text.encode()).hexdigest()[:12]} cannot render the conversation whose first user "
        f"message is 'add 0 and 0 :': {found}"
    ) in err
