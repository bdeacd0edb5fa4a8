"""train.precision: which arithmetic a run uses, that it is recorded, and that bf16 learns as fp32 does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny
import torch

from search.cli import main
from trainer import ConfigError, config_from_dict, resolve_precision, run_job
from trainer.job import cpu_has_native_bf16


def _cfg(tmp: Path, bert_dir: Path, precision: str | None, out: str = "out", **train):
    data = tiny.classification_config(tmp, bert_dir, max_steps=40, eval_every=10, **train)
    data["output_dir"] = str(tmp / out)
    if precision is not None:
        data["train"]["precision"] = precision
    return config_from_dict(data, source="test", base_dir=tmp)


def _cpuinfo_says_bf16() -> bool | None:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def test_canary_torch_cpu_probes_agree_with_the_cpu_flags() -> None:
    # cpu_has_native_bf16 reaches into torch.cpu's private probes; if they move, it falls back to /proc/cpuinfo.
    assert callable(getattr(torch.cpu, "_is_avx512_bf16_supported", None)), "torch.cpu's bf16 probe moved"
    assert callable(getattr(torch.cpu, "_is_amx_tile_supported", None)), "torch.cpu's AMX probe moved"
    expected = _cpuinfo_says_bf16()
    if expected is None:
        pytest.skip("no /proc/cpuinfo on this system to compare the probes with")
    assert cpu_has_native_bf16() is expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU rule; CUDA follows torch.cuda.is_bf16_supported")
def test_auto_is_bf16_exactly_where_the_cpu_does_bf16_natively() -> None:
    assert resolve_precision("auto") == ("cpu", "bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32") == ("cpu", "fp32")
    assert resolve_precision("bf16") == ("cpu", "bf16")


def test_fp32_and_bf16_runs_record_their_precision_and_both_learn(tmp_path: Path, bert_dir: Path) -> None:
    fp32 = run_job(_cfg(tmp_path, bert_dir, "fp32", out="fp32"))
    bf16 = run_job(_cfg(tmp_path, bert_dir, "bf16", out="bf16"))
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert json.loads((tmp_path / "bf16" / "metrics.json").read_text())["precision"] == "bf16"
    # Mixed precision keeps fp32 weights: same learning, not the same bits.
    assert fp32.metrics["accuracy"] >= 0.75 and bf16.metrics["accuracy"] >= 0.75
    assert abs(fp32.metrics["eval_loss"] - bf16.metrics["eval_loss"]) < 0.1
    assert fp32.history != bf16.history  # bf16 really ran (autocast changes the last bits)


def test_bf16_run_repeats_exactly(tmp_path: Path, bert_dir: Path) -> None:
    first = run_job(_cfg(tmp_path, bert_dir, "bf16", out="a")).history
    second = run_job(_cfg(tmp_path, bert_dir, "bf16", out="b")).history
    assert first == second


def test_unknown_precision_is_a_config_error(tmp_path: Path, bert_dir: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, bert_dir, "fp16")
    text = str(err.value)
    assert "train.precision" in text and "fp16" in text


def test_cli_train_says_which_precision_it_used(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    data = tiny.classification_config(tmp_path, bert_dir, max_steps=10, eval_every=10)
    data["train"]["precision"] = "fp32"
    path = tmp_path / "train.yaml"
    tiny.write_config(path, data)
    assert main(["train", str(path)]) == 0
    assert "fp32" in capsys.readouterr().out.split("final metrics", 1)[1].splitlines()[0]


def test_lora_in_fp32_arithmetic_holds_fp32_weights(tmp_path: Path, bert_dir: Path) -> None:
    """`precision: fp32` runs without autocast: `model_dtype: auto` keeps the frozen weights in fp32 then (bf16
    weights under fp32 arithmetic fail on the first matmul)."""
    data = tiny.classification_config(tmp_path, bert_dir, max_steps=20, eval_every=10, precision="fp32")
    data["peft"] = {"method": "lora", "r": 4}
    result = run_job(config_from_dict(data, source="test", base_dir=tmp_path))
    assert (result.precision, result.model_dtype) == ("fp32", "fp32")
    assert [h["step"] for h in result.history] == [10, 20]
