"""The `sftune` command line: train, run, status, export, dashboard."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from trainer import ConfigError

EXIT_BAD_INPUT = 2


def _print(msg: str) -> None:
    print(msg, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from trainer import load_train_config, prepare, run_job

    cfg = load_train_config(args.config, args.set)
    prepared = prepare(cfg, source=args.config)
    _print(f"sftune train: {cfg.task} · model {cfg.model} · peft {cfg.peft.method} · "
           f"{len(prepared.train)} train / {len(prepared.validation)} validation examples")
    result = run_job(cfg, source=args.config, progress=_print, prepared=prepared)
    _print("final metrics (step {}/{}, {:.0f}s on {}):".format(result.step, result.max_steps,
                                                              result.seconds["total"], result.device))
    for key, value in result.metrics.items():
        _print(f"  {key:<10} {value:.4f}")
    _print(f"wrote {cfg.output_dir}/metrics.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sftune",
        description="Find the best hyperparameters for supervised fine-tuning of transformer models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="run one fine-tuning job from a train config",
                       description="Train and evaluate one config; writes metrics.json under its output_dir.")
    p.add_argument("config", help="train config YAML")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config key, e.g. --set train.learning_rate=1e-4 (repeatable)")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
