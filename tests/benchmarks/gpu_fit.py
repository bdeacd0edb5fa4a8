"""On a CUDA GPU: what a LoRA trial's weights cost in fp32 against bf16, and a QLoRA trial (issue 17).

    python tests/benchmarks/gpu_fit.py [--hidden 2048 --layers 16 --steps 20]

Builds a random Llama (~0.8B parameters at the defaults; nothing is downloaded) with the tests' tiny
word-level tokenizer and synthetic SFT rows, then runs the same short job four ways, each in this process
one after another (the memory figures are CUDA's peak for that job, reset before it):

  lora  model_dtype fp32 | lora  model_dtype bf16 | lora bf16 + gradient checkpointing | qlora 4-bit nf4

and prints one line each: parameter MiB (all, trainable), CUDA peak MiB, final eval_loss, seconds. The
QLoRA line is skipped, saying why, when bitsandbytes is missing or cannot run here. Exit 2 without CUDA.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/tiny.py

MB = 1024 * 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("needs a CUDA GPU (torch.cuda.is_available() is False)")
        return 2
    import tiny
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer import config_from_dict, run_job
    from trainer._quant import backend_problem

    tmp = Path(tempfile.mkdtemp(prefix="gpu-fit-"))
    model_dir = tmp / "llama"
    n = len(tiny.make_tokenizer(model_dir))
    torch.manual_seed(0)
    heads = max(1, args.hidden // 128)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=n,
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=int(args.hidden * 2.6875) // 64 * 64,
            max_position_embeddings=128,
            pad_token_id=0,
            eos_token_id=4,
            bos_token_id=4,
        )
    ).save_pretrained(model_dir)
    print(
        f"GPU {torch.cuda.get_device_name()} · torch {torch.__version__} · random Llama hidden {args.hidden}, "
        f"{args.layers} layers"
    )
    runs = {
        "lora fp32 weights": ({"method": "lora"}, {"model_dtype": "fp32"}),
        "lora bf16 weights": ({"method": "lora"}, {"model_dtype": "bf16"}),
        "lora bf16 + checkpointing": ({"method": "lora"}, {"model_dtype": "bf16", "gradient_checkpointing": True}),
        "qlora 4-bit nf4": ({"method": "qlora"}, {"model_dtype": "bf16"}),
    }
    for name, (peft, train) in runs.items():
        if peft["method"] == "qlora" and (why := backend_problem(4)) is not None:
            print(f"{name:<28} skipped: {why}")
            continue
        data = tiny.sft_config(
            tmp / name.replace(" ", "-"),
            model_dir,
            max_steps=args.steps,
            eval_every=args.steps,
            batch_size=args.batch,
            learning_rate=2e-4,
            **train,
        )
        data["peft"] = {**peft, "r": 16, "alpha": 32, "target_modules": "all-linear"}
        cfg = config_from_dict(data, source=name, base_dir=tmp)
        start = time.perf_counter()
        memory: dict[str, float] = {}
        result = run_job(cfg, memory=memory)
        print(
            f"{name:<28} params {result.parameters['bytes'] / MB:8.0f} MiB (trainable "
            f"{result.parameters['trainable_bytes'] / MB:.0f})  cuda peak {memory.get('cuda_peak_mb', 0):8.0f} MiB  "
            f"eval_loss {result.metrics['eval_loss']:.4f}  {time.perf_counter() - start:5.1f} s  "
            f"({result.precision} arithmetic, {result.model_dtype} weights)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
