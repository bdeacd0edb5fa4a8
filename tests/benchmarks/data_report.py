"""Data report benchmark: `sftune data` on full SST-2 (67,349 train rows) with the bundled MiniLM tokenizer.

    python tests/benchmarks/data_report.py [--dataset sst2] [--max-length 64]

Times the real command in a fresh process (imports included, three runs) and, in this process, each
phase: reading and checking the rows, loading the tokenizer, tokenizing every split, and the report
itself (what `sftune run` adds to its header when it already holds the tokenized data).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SFTUNE_SHARED_DATA", REPO.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = SHARED / args.dataset
    data = {"train": str(folder / "train.jsonl")}
    for split in ("validation", "test"):
        if (folder / f"{split}.jsonl").exists():
            data[split] = str(folder / f"{split}.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "data.yaml"
        config.write_text(
            yaml.safe_dump({"model": "minilm-l6", "data": data, "train": {"max_length": args.max_length}})
        )
        walls = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "search", "data", str(config), "--json"],
                check=True,
                capture_output=True,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            walls.append(time.perf_counter() - t0)
        print(
            f"sftune data {args.dataset} (fresh process, imports included): median {statistics.median(walls):.1f} s "
            f"(runs: {', '.join(f'{w:.1f}' for w in walls)})"
        )

        from search.data_report import data_report
        from trainer import Prepared, load_train_config
        from trainer._model import load_tokenizer, model_location
        from trainer._tokenize import tokenize
        from trainer.data import load_examples

        cfg = load_train_config(config)
        t0 = time.perf_counter()
        examples = load_examples(cfg)
        t1 = time.perf_counter()
        location = model_location(cfg)
        tokenizer = load_tokenizer(location)
        t2 = time.perf_counter()
        splits, stats = tokenize(examples, tokenizer, cfg.train.max_length)
        t3 = time.perf_counter()
        prep = Prepared(
            location, tokenizer, examples, splits["train"], splits["validation"], splits.get("test", []), stats
        )
        report = data_report(cfg, str(config), prepared=prep)
        t4 = time.perf_counter()
        rows = sum(info["rows"] for info in report["splits"].values())
        print(
            f"phases for {rows:,} rows: read+check {t1 - t0:.2f} s · tokenizer (imports) {t2 - t1:.2f} s · "
            f"tokenize {t3 - t2:.2f} s · report from tokenized data {t4 - t3:.2f} s"
        )


if __name__ == "__main__":
    main()
