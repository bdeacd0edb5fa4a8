"""Trials that fit: weights in their own precision (`train.model_dtype`), recorded and learning as fp32 does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny
import torch

from trainer import config_from_dict, run_job
from trainer._precision import resolve_model_dtype


def _sft(tmp: Path, llama_dir: Path, out: str, peft: dict | None = None, **train):
    train = {"max_steps": 40, "eval_every": 10, "learning_rate": 1e-2, "precision": "fp32", **train}
    data = tiny.sft_config(tmp, llama_dir, **train)
    data["output_dir"] = str(tmp / out)
    data["peft"] = peft or {"method": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"}
    return config_from_dict(data, source="test", base_dir=tmp)


def test_auto_model_dtype_is_bf16_only_for_adapters_on_a_native_bf16_device() -> None:
    assert resolve_model_dtype("auto", "lora", native_bf16=True) == "bf16"
    assert resolve_model_dtype("auto", "qlora", native_bf16=True) == "bf16"
    assert resolve_model_dtype("auto", "full", native_bf16=True) == "fp32"
    assert resolve_model_dtype("auto", "lora", native_bf16=False) == "fp32"
    assert resolve_model_dtype("fp16", "full", native_bf16=False) == "fp16"
    assert resolve_model_dtype("auto", "lora", native_bf16=True, precision="fp32") == "fp32"  # no autocast
    assert resolve_model_dtype("auto", "lora", native_bf16=True, precision="bf16") == "bf16"


def test_bf16_weights_halve_the_frozen_bytes_and_train_as_fp32_does(tmp_path: Path, llama_dir: Path) -> None:
    fp32 = run_job(_sft(tmp_path, llama_dir, "fp32", model_dtype="fp32"))
    bf16 = run_job(_sft(tmp_path, llama_dir, "bf16", model_dtype="bf16"))
    assert (fp32.model_dtype, bf16.model_dtype) == ("fp32", "bf16")
    saved = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    assert saved["model_dtype"] == "bf16" and saved["precision"] == "fp32"
    # The adapter stays fp32: same trainable bytes; the frozen weights take half.
    assert bf16.parameters["trainable_bytes"] == fp32.parameters["trainable_bytes"] > 0
    frozen32 = fp32.parameters["bytes"] - fp32.parameters["trainable_bytes"]
    frozen16 = bf16.parameters["bytes"] - bf16.parameters["trainable_bytes"]
    assert frozen16 * 2 == frozen32
    # In all: 0.63x here, where the adapter is a quarter of a 32-wide model; ~0.5x where it is ~1% (a 1B model)
    assert bf16.parameters["bytes"] / fp32.parameters["bytes"] < 0.65
    for run in (fp32, bf16):  # both learn (a random 32-wide Llama with a frozen random head learns slowly)
        assert run.metrics["eval_loss"] < run.history[0]["eval_loss"] - 0.02
    assert abs(bf16.metrics["eval_loss"] - fp32.metrics["eval_loss"]) / fp32.metrics["eval_loss"] < 0.03


# ---- train.gradient_checkpointing ----------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_losses_in_fp32(tmp_path: Path, llama_dir: Path) -> None:
    off = run_job(_sft(tmp_path, llama_dir, "off", model_dtype="fp32"))
    on = run_job(_sft(tmp_path, llama_dir, "on", model_dtype="fp32", gradient_checkpointing=True))
    assert [h["step"] for h in on.history] == [h["step"] for h in off.history]
    for a, b in zip(on.history, off.history, strict=True):
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-5)


def _saved_bytes(model, batch) -> int:
    """Bytes of the tensors autograd keeps for the backward pass during one training forward."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch).loss.backward()
    return sum(seen.values())


def test_gradient_checkpointing_keeps_fewer_activations(tmp_path: Path, llama_dir: Path) -> None:
    from trainer._model import build_model, load_tokenizer

    tok = load_tokenizer(str(llama_dir))
    ids = torch.randint(5, len(tok), (8, 64), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    sizes = {}
    for on in (False, True):
        cfg = _sft(tmp_path, llama_dir, f"m{on}", model_dtype="fp32", gradient_checkpointing=on)
        sizes[on] = _saved_bytes(build_model(cfg, str(llama_dir), tok, 0, []), batch)
    assert sizes[True] < 0.5 * sizes[False], sizes


# ---- QLoRA ---------------------------------------------------------------------------------------------------


def test_quantization_block_becomes_the_bitsandbytes_config() -> None:
    from trainer._quant import bnb_config
    from trainer.config import QuantizationConfig

    q4 = bnb_config(QuantizationConfig(bits=4, type="fp4", double_quant=False, compute_dtype="fp16"))
    assert q4.load_in_4bit and not q4.load_in_8bit
    assert (q4.bnb_4bit_quant_type, q4.bnb_4bit_use_double_quant, q4.bnb_4bit_compute_dtype) == (
        "fp4",
        False,
        torch.float16,
    )
    default = bnb_config(QuantizationConfig())
    assert (default.bnb_4bit_quant_type, default.bnb_4bit_use_double_quant, default.bnb_4bit_compute_dtype) == (
        "nf4",
        True,
        torch.bfloat16,
    )
    assert bnb_config(QuantizationConfig(bits=8)).load_in_8bit


@pytest.fixture(scope="module")
def llama64_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose layers are 64 wide: bitsandbytes' CPU 4-bit kernels need in_features >= its block of 64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama64")
    torch.manual_seed(0)
    n = len(tiny.make_tokenizer(out))
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=n,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=128,
            max_position_embeddings=128,
            pad_token_id=0,
            eos_token_id=4,
            bos_token_id=4,
        )
    ).save_pretrained(out)
    return out


def _bnb_cpu_reason() -> str | None:
    from trainer._quant import backend_problem

    if torch.cuda.is_available():
        return "a CUDA GPU is present: tests/benchmarks/gpu_fit.py runs QLoRA there"
    return backend_problem(4)


def test_qlora_trains_on_cpu_when_bitsandbytes_runs_4bit_here(tmp_path: Path, llama64_dir: Path) -> None:
    reason = _bnb_cpu_reason()
    if reason is not None:
        pytest.skip(f"QLoRA on CPU needs bitsandbytes with a CPU 4-bit backend: {reason}")
    peft = {"r": 8, "alpha": 16, "target_modules": "all-linear"}
    lora = run_job(_sft(tmp_path, llama64_dir, "lora", peft={"method": "lora", **peft}, model_dtype="fp32"))
    qlora = run_job(
        _sft(
            tmp_path, llama64_dir, "qlora", peft={"method": "qlora", **peft, "quantization": {"compute_dtype": "fp32"}}
        )
    )
    assert qlora.metrics["eval_loss"] < qlora.history[0]["eval_loss"] - 0.01  # it learns
    assert abs(qlora.metrics["eval_loss"] - lora.metrics["eval_loss"]) / lora.metrics["eval_loss"] < 0.05
    # 4-bit linear weights: the model's bytes well under the fp32 LoRA model's
    assert qlora.parameters["bytes"] < 0.6 * lora.parameters["bytes"]
    saved = json.loads((tmp_path / "qlora" / "metrics.json").read_text())
    assert saved["config"]["peft"]["quantization"] == {
        "bits": 4,
        "type": "nf4",
        "double_quant": True,
        "compute_dtype": "fp32",
    }


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_qlora_trains_on_a_gpu(tmp_path: Path, llama64_dir: Path) -> None:
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'sftune[qlora]')")
    result = run_job(_sft(tmp_path, llama64_dir, "q", peft={"method": "qlora", "r": 4, "alpha": 8}))
    assert result.device == "cuda"
    assert result.metrics["eval_loss"] < result.history[0]["eval_loss"]


# ---- out of memory -------------------------------------------------------------------------------------------


def test_out_of_memory_ends_the_job_with_its_step_and_peak(tmp_path: Path, llama_dir: Path) -> None:
    import sys

    from trainer import OutOfMemory

    sys.path.insert(0, str(Path(__file__).parent))  # tests/unit/_oom_task.py as a user's module
    data = tiny.sft_config(tmp_path, llama_dir, max_steps=10, eval_every=5, batch_size=16)
    data["task"] = "_oom_task:OomSFT"
    with pytest.raises(OutOfMemory) as err:
        run_job(config_from_dict(data, source="test", base_dir=tmp_path))
    assert err.value.step == 3
    assert str(err.value).startswith("out of memory at step 3 (peak ")
    assert 10 < err.value.peak_mib < 1e6 and "Tried to allocate 20.00 GiB" in str(err.value)
    data["train"]["batch_size"] = 8  # fits
    assert run_job(config_from_dict(data, source="test", base_dir=tmp_path)).step == 10


def test_a_worker_killed_for_memory_fails_without_a_retry() -> None:
    from search._driver.outcome import failure, killed_for_memory

    class OutOfMemoryError(Exception):  # ray.exceptions' name for what its memory monitor kills
        pass

    assert killed_for_memory(OutOfMemoryError("Task was killed due to the node running low on memory."))
    assert not killed_for_memory(RuntimeError("node died"))
    message, retry = failure(
        stopped=None,
        result=None,
        error=True,
        worker_error="out of memory: the trial's Ray worker died: killed",
        retries=lambda: 0,
        timed_out=None,
        stop_reason="",
    )
    assert not retry and "not retried" in message
    _, retry = failure(
        stopped=None,
        result=None,
        error=True,
        worker_error="the trial's Ray worker died: x",
        retries=lambda: 0,
        timed_out=None,
        stop_reason="",
    )
    assert retry


# ---- job options ---------------------------------------------------------------------------------------------


def _args(cfg, tmp: Path, max_steps: int = 100):
    from transformers import TrainingArguments

    from trainer._optim import trainer_options

    return TrainingArguments(
        output_dir=str(tmp / "_t"),
        learning_rate=cfg.train.learning_rate,
        max_steps=max_steps,
        report_to="none",
        use_cpu=True,
        **trainer_options(cfg, max_steps),
    )


@pytest.mark.parametrize(
    ("name", "cls", "expected"),
    [
        ("adamw", "AdamW", {"betas": (0.9, 0.95)}),
        ("sgd", "SGD", {"momentum": 0.9}),
        ("adafactor", "Adafactor", {"relative_step": False, "scale_parameter": False}),
    ],
)
def test_optimizer_choice_is_the_optimizer_trainer_builds(
    tmp_path: Path, llama_dir: Path, name: str, cls: str, expected: dict
) -> None:
    from transformers import Trainer

    cfg = _sft(tmp_path, llama_dir, "o", optimizer=name, adam_beta2=0.95)
    got_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(_args(cfg, tmp_path))
    assert got_cls.__name__ == cls
    assert {k: kwargs[k] for k in expected} == expected


def _lrs(cfg, tmp: Path, steps: int = 100) -> list[float]:
    from transformers import get_scheduler

    args = _args(cfg, tmp, steps)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.learning_rate)
    sched = get_scheduler(
        args.lr_scheduler_type,
        opt,
        num_warmup_steps=10,
        num_training_steps=steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return [*out, opt.param_groups[0]["lr"]]


def test_cosine_ends_at_min_lr_ratio_and_wsd_holds_then_decays(tmp_path: Path, llama_dir: Path) -> None:
    lr = 1e-3
    cos = _lrs(_sft(tmp_path, llama_dir, "c", learning_rate=lr, lr_scheduler="cosine", min_lr_ratio=0.1), tmp_path)
    assert cos[10] == pytest.approx(lr) and cos[-1] == pytest.approx(0.1 * lr)
    wsd = _lrs(
        _sft(
            tmp_path,
            llama_dir,
            "w",
            learning_rate=lr,
            lr_scheduler="warmup_stable_decay",
            min_lr_ratio=0.05,
            decay_ratio=0.2,
        ),
        tmp_path,
    )
    assert all(v == pytest.approx(lr) for v in wsd[10:80])  # stable until the last 20%
    assert wsd[90] < lr and wsd[-1] == pytest.approx(0.05 * lr)


def test_label_smoothing_smooths_training_only(tmp_path: Path, llama_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from trainer._optim import label_smoothed

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    ids = torch.randint(5, 40, (4, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = -100
    own = model(input_ids=ids, labels=labels).loss
    out = model(input_ids=ids)
    loss = label_smoothed(0.1, True, None, model)
    model.eval()
    assert loss(out, labels).item() == pytest.approx(own.item(), rel=1e-5)  # evaluation: the plain loss
    sharp = torch.zeros_like(out.logits)  # a model sure of every next token: smoothing costs it
    sharp[:, :-1].scatter_(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1), 10.0)
    sharp = {"logits": sharp}
    plain = loss(sharp, labels).item()
    model.train()
    assert loss(sharp, labels).item() > plain + 0.1  # training: smoothed
    assert label_smoothed(0.0, True, None, model) is None


def test_dropout_is_set_on_the_architectures_fields(tmp_path: Path, llama_dir: Path, bert_dir: Path) -> None:
    from trainer._model import build_model, load_tokenizer

    tok = load_tokenizer(str(llama_dir))
    model = build_model(_sft(tmp_path, llama_dir, "d", dropout=0.2), str(llama_dir), tok, 0, [])
    assert model.base_model.model.config.attention_dropout == 0.2
    data = tiny.classification_config(tmp_path, bert_dir, dropout=0.3)
    cfg = config_from_dict(data, source="test", base_dir=tmp_path)
    model = build_model(cfg, str(bert_dir), load_tokenizer(str(bert_dir)), 2, ["a", "b"])
    assert (model.config.hidden_dropout_prob, model.config.attention_probs_dropout_prob) == (0.3, 0.3)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}


def test_lora_variants_shape_the_adapter(tmp_path: Path, llama_dir: Path) -> None:
    from trainer._model import build_model, load_tokenizer

    tok = load_tokenizer(str(llama_dir))

    def build(**peft):
        cfg = _sft(tmp_path, llama_dir, "v", peft={"method": "lora", "r": 4, "alpha": 8, **peft}, model_dtype="fp32")
        return build_model(cfg, str(llama_dir), tok, 0, [])

    q = lambda m: m.base_model.model.model.layers[0].self_attn.q_proj  # noqa: E731
    assert q(build()).scaling["default"] == pytest.approx(8 / 4)
    assert q(build(use_rslora=True)).scaling["default"] == pytest.approx(8 / 2)  # alpha / sqrt(r)
    assert "default" in q(build(use_dora=True)).lora_magnitude_vector
    plain_b = q(build()).lora_B["default"].weight
    assert torch.count_nonzero(plain_b) == 0
    assert torch.count_nonzero(q(build(init_lora_weights="gaussian")).lora_B["default"].weight) == 0
    base = q(build()).base_layer.weight
    assert not torch.allclose(q(build(init_lora_weights="pissa")).base_layer.weight, base)  # residual of the SVD
    assert not torch.allclose(q(build(init_lora_weights="olora")).base_layer.weight, base)
    saved = build(modules_to_save=["lm_head"])
    heads = [(n, p) for n, p in saved.named_parameters() if "lm_head" in n and p.requires_grad]
    assert heads and all(p.dtype == torch.float32 for _, p in heads)


def test_loraplus_gives_the_b_matrices_ratio_times_the_rate(tmp_path: Path, llama_dir: Path) -> None:
    from trainer._model import build_model, load_tokenizer
    from trainer._optim import loraplus_optimizer

    cfg = _sft(
        tmp_path,
        llama_dir,
        "p",
        peft={"method": "lora", "r": 4, "alpha": 8, "loraplus_ratio": 16.0},
        learning_rate=1e-4,
    )
    model = build_model(cfg, str(llama_dir), load_tokenizer(str(llama_dir)), 0, [])
    opt = loraplus_optimizer(cfg, model, _args(cfg, tmp_path))
    names = {id(p): n for n, p in model.named_parameters()}
    rates = {("lora_B" in names[id(p)]): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert rates == {True: pytest.approx(16e-4), False: pytest.approx(1e-4)}
    assert type(opt).__name__ == "AdamW"


def test_options_run_through_a_job_and_are_recorded(tmp_path: Path, llama_dir: Path) -> None:
    cfg = _sft(
        tmp_path,
        llama_dir,
        "all",
        peft={"method": "lora", "r": 4, "alpha": 8, "use_rslora": True, "use_dora": True, "loraplus_ratio": 4.0},
        optimizer="adamw",
        adam_beta2=0.95,
        lr_scheduler="cosine",
        min_lr_ratio=0.1,
        label_smoothing=0.1,
        dropout=0.1,
        neftune_alpha=5.0,
        gradient_checkpointing=True,
        model_dtype="bf16",
    )
    result = run_job(cfg)
    assert result.metrics["eval_loss"] < result.history[0]["eval_loss"]
    saved = json.loads((tmp_path / "all" / "metrics.json").read_text())["config"]
    assert saved["train"]["neftune_alpha"] == 5.0 and saved["peft"]["use_dora"] is True


# ---- bad input: exit 2 before anything trains ----------------------------------------------------------------


def _exit2(tmp: Path, data: dict, capsys: pytest.CaptureFixture) -> str:
    from search.cli import main

    path = tiny.write_config(tmp / "train.yaml", data)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not (Path(data["output_dir"]) / "metrics.json").exists()
    return err


@pytest.fixture
def sft_data(tmp_path: Path, llama_dir: Path) -> dict:
    return tiny.sft_config(tmp_path, llama_dir, max_steps=4, eval_every=2)


def test_missing_bitsandbytes_is_named(
    tmp_path: Path, sft_data: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer._quant

    monkeypatch.setattr(trainer._quant, "bitsandbytes_installed", lambda: False)
    sft_data["train"]["optimizer"] = "paged_adamw_8bit"
    sft_data["peft"]["method"] = "qlora"
    err = _exit2(tmp_path, sft_data, capsys)
    assert "train.optimizer: paged_adamw_8bit needs the package bitsandbytes, which is not installed" in err
    assert "peft.method: qlora needs the package bitsandbytes, which is not installed" in err
    assert 'pip install "sftune[qlora]"' in err


def test_lora_only_options_on_a_full_fine_tune(tmp_path: Path, sft_data: dict, capsys: pytest.CaptureFixture) -> None:
    sft_data["peft"] = {"method": "full", "use_dora": True, "loraplus_ratio": 16, "quantization": {"bits": 8}}
    err = _exit2(tmp_path, sft_data, capsys)
    assert "peft.use_dora: DoRA is a kind of LoRA adapter; peft.method is full" in err
    assert "peft.loraplus_ratio: LoRA+ sets the learning rate of LoRA's B matrices; peft.method is full" in err
    assert "peft.quantization: quantized weights cannot be trained in full" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU rule: fp16 weights are allowed on a GPU")
def test_fp16_weights_on_a_cpu(tmp_path: Path, sft_data: dict, capsys: pytest.CaptureFixture) -> None:
    sft_data["train"]["model_dtype"] = "fp16"
    err = _exit2(tmp_path, sft_data, capsys)
    assert "train.model_dtype: fp16 weights need a CUDA GPU" in err


def test_gradient_checkpointing_on_a_model_without_it(
    tmp_path: Path, llama_dir: Path, sft_data: dict, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    jet = tmp_path / "jetmoe"
    shutil.copytree(llama_dir, jet)
    settings = json.loads((jet / "config.json").read_text())
    (jet / "config.json").write_text(json.dumps({**settings, "model_type": "jetmoe"}))
    sft_data["model"] = str(jet)
    sft_data["train"]["gradient_checkpointing"] = True
    err = _exit2(tmp_path, sft_data, capsys)
    assert "train.gradient_checkpointing:" in err and "(jetmoe) does not support gradient checkpointing" in err


def test_option_ranges_and_pairings(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    data = tiny.classification_config(
        tmp_path,
        bert_dir,
        neftune_alpha=5,
        min_lr_ratio=0.1,
        label_smoothing=0.1,
        class_weights="balanced",
        adam_beta2=1.5,
    )
    err = _exit2(tmp_path, data, capsys)
    assert "train.neftune_alpha: NEFTune noises the embeddings of a causal LM" in err
    assert "train.min_lr_ratio: applies to lr_scheduler cosine or warmup_stable_decay; lr_scheduler is linear" in err
    assert "train.label_smoothing: cannot be combined with class_weights: balanced" in err
    assert "train.adam_beta2: must be in (0, 1), found 1.5" in err
