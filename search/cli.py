"""The `sftune` command line: train, run, status, export, plot, report, dashboard, spaces, data, test."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from trainer import ConfigError, Problem

EXIT_BAD_INPUT = 2
EXIT_STORAGE = 1
"""A study database that failed during a run (search.storage.StorageFailure): one line, no traceback."""


def _print(msg: str) -> None:
    print(msg, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from search.api import train

    train(args.config, say=_print, _items=args.set)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from search.api import RunFailed, run

    try:
        run(
            args.study,
            n_trials=args.n_trials,
            storage=args.storage,
            address=args.address,
            say=_print,
            allow_base_change=args.allow_base_change,
            warm_start=args.warm_start,
            no_tracking=args.no_tracking,
            _items=args.set,
        )
    except RunFailed as exc:
        return exc.exit_code
    return 0


def _open(args: argparse.Namespace):
    """The study file (with --set / --storage) and its existing study; never creates a database."""
    from search.api import open_existing

    return open_existing(args.study, args.set, args.storage)


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from search.api import status

    info = status(args.study, storage=args.storage, top=args.top, _items=args.set)
    _print(json.dumps(info.summary, indent=2, default=str) if args.json else info.table())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from search.api import export

    export(args.study, args.out, trial=args.trial, storage=args.storage, say=_print, _items=args.set)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from search.plots import write_plots

    cfg, study = _open(args)
    out = Path(args.out or cfg.output_dir / "plots")
    written = write_plots(study, cfg, out)
    for path in written:
        _print(f"wrote {path}")
    if not written:
        _print(f"nothing to plot yet: study {cfg.name!r} has no complete trial and no evaluation; no file written")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from search.html_report import write_report

    cfg, study = _open(args)
    out = Path(args.out or f"{cfg.name}-report.html")
    if out.is_dir():
        out = out / f"{cfg.name}-report.html"
    write_report(study, cfg, out)
    _print(f"wrote {out} (one file, opens offline)")
    return 0


def cmd_spaces(args: argparse.Namespace) -> int:
    from search.recipes import description, shipped_spaces, shipped_studies

    _print("shipped search spaces (in a study file: `space: NAME`):")
    spaces = shipped_spaces()
    width = max((len(n) for n in spaces), default=0)
    for name, path in spaces.items():
        _print(f"  {name:<{width}}  {description(path)}")
    _print("shipped studies (`sftune run NAME`; the database and runs/ go to the current folder):")
    for name, path in shipped_studies().items():
        _print(f"  {name:<{width}}  {description(path)}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from search.artifacts import artifact_store
    from search.storage import StudyHandle

    cfg, study = _open(args)
    import optuna_dashboard

    _print(f"optuna-dashboard for {cfg.storage} at http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    optuna_dashboard.run_server(
        StudyHandle.of(study).storage, host=args.host, port=args.port, artifact_store=artifact_store(cfg, create=False)
    )
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    import json

    from search.data_report import data_report, render

    cfg, source = _train_config_of(args.config, args.set)
    report = data_report(cfg, source)
    _print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _train_config_of(path: str, overrides: list[str]):
    """A train config file, or a study file's base config (a study has `base` and `space`)."""
    from trainer import load_train_config, read_yaml

    raw = read_yaml(path)
    if "base" in raw and "space" in raw:
        from search.config import load_study

        study = load_study(path, [f"base.{o}" if not o.startswith("base.") else o for o in overrides])
        return study.base_config, str(study.path)
    return load_train_config(path, overrides), path


def cmd_test(args: argparse.Namespace) -> int:
    from search.testset import evaluate_best_on_test

    cfg, study = _open(args)
    results = evaluate_best_on_test(study, cfg, top=args.top, say=_print)
    if not results:
        raise ConfigError(Problem(str(cfg.path), "", f"study {cfg.name!r} has no complete trial to test yet"))
    _print(f"stored test_metrics on {len(results)} trial(s) and on study {cfg.name} (sftune status {args.study})")
    return 0


def _study_options(p: argparse.ArgumentParser) -> None:
    """What locates a study, the same for every command that opens one."""
    p.add_argument("study", help="study YAML, or the name of a shipped study (see `sftune spaces`)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="override a study key (budget.n_trials=20, name=other) or a base config key "
        "(base.train.max_steps=100), as given to `sftune run` (repeatable)",
    )
    p.add_argument(
        "--storage", default=None, metavar="URL", help="study database URL (default: the study file's storage)"
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sftune")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The `sftune` parser: its own options, then one subcommand per command, in the order `--help` lists them."""
    parser = argparse.ArgumentParser(
        prog="sftune",
        description="Find the best hyperparameters for supervised fine-tuning of transformer models.",
    )
    parser.add_argument(
        "--version", action="version", version=f"sftune {_version()}", help="print the installed version and exit"
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", help="one of the commands below; `sftune COMMAND --help` for its options"
    )
    sub.required = True
    _add_train(sub)
    _add_run(sub)
    _add_status(sub)
    _add_export(sub)
    _add_plot(sub)
    _add_report(sub)
    _add_dashboard(sub)
    _add_data(sub)
    _add_test(sub)
    _add_spaces(sub)
    return parser


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`sftune train CONFIG`: one fine-tuning job."""
    p = sub.add_parser(
        "train",
        help="run one fine-tuning job from a train config",
        description="Train and evaluate one config; writes metrics.json under its output_dir.",
    )
    p.add_argument("config", help="train config YAML")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="override a config key, e.g. --set train.learning_rate=1e-4 (repeatable)",
    )
    p.set_defaults(func=cmd_train)


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`sftune run STUDY`: create or resume a study and run its trials."""
    p = sub.add_parser(
        "run",
        help="run (or resume) a study: trials through Ray Tune, sampled and pruned by Optuna",
        description="Create or resume the study and run trials until it holds budget.n_trials "
        "finished (complete or pruned) trials.",
    )
    _study_options(p)
    p.add_argument("--n-trials", type=int, default=None, help="finished trials the study should hold in total")
    p.add_argument(
        "--address",
        default=None,
        help="join the Ray cluster at HOST:PORT (or auto) instead of starting a local one; default: "
        "RAY_ADDRESS if set; `local` starts a local cluster whatever RAY_ADDRESS says",
    )
    p.add_argument(
        "--allow-base-change",
        action="store_true",
        help="resume a study whose base config changed since it was created (its trials will not "
        "all compare); without it such a resume is refused",
    )
    p.add_argument(
        "--warm-start",
        action="append",
        default=None,
        metavar="STUDY[@STORAGE]",
        help="run the best trials of an earlier study first (its storage: this study's by default); "
        "repeatable; replaces the study file's warm_start",
    )
    p.add_argument(
        "--no-tracking",
        action="store_true",
        help="run without the study file's tracking (MLflow, W&B), e.g. while its server is down",
    )
    p.set_defaults(func=cmd_run)


def _add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`sftune status STUDY`: a study's trials by state, its best ones and its failures."""
    p = sub.add_parser("status", help="counts by state, the best and top trials, why trials failed")
    _study_options(p)
    p.add_argument("--top", type=int, default=5, help="how many of the best trials to list (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_status)


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`sftune export STUDY --out PATH`: a trial's train config and its stored files."""
    p = sub.add_parser(
        "export", help="write a trial's complete train config (the best by default) and its stored adapter or model"
    )
    _study_options(p)
    p.add_argument(
        "--out",
        required=True,
        help="the train config to write, e.g. best.yaml, or a folder to write "
        "best.yaml (trial-N.yaml with --trial) into",
    )
    p.add_argument("--trial", type=int, default=None, help="trial number (default: the best trial)")
    p.set_defaults(func=cmd_export)


def _add_plot(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`sftune plot STUDY`: a study's pictures as PNGs."""
    p = sub.add_parser("plot", help="save PNG pictures: optimization history, learning curves, importances")
    _study_options(p)
    p.add_argument("--out", default=None, help="folder for the PNGs (default: <output_dir>/plots)")
    p.set_defaults(func=cmd_plot)


def _add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`sftune report STUDY`: a study as one HTML file."""
    p = sub.add_parser("report", help="write one self-contained HTML report of a study (opens with no network)")
    _study_options(p)
    p.add_argument("--out", default=None, help="the HTML file to write (default: <name>-report.html here)")
    p.set_defaults(func=cmd_report)


def _add_dashboard(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`sftune dashboard STUDY`: optuna-dashboard served on a study."""
    p = sub.add_parser("dashboard", help="serve optuna-dashboard on the study's storage and artifacts")
    _study_options(p)
    p.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1, this machine only)")
    p.set_defaults(func=cmd_dashboard)


def _add_data(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`sftune data CONFIG`: a report on a config's data before training."""
    p = sub.add_parser(
        "data",
        help="report on a config's data before training: sizes, labels, duplicates, leakage, token lengths",
        description="Rows per split, label balance, empty and duplicate rows, rows shared between "
        "splits, token lengths against max_length, and what to do about them.",
    )
    p.add_argument("config", help="train config YAML, or a study YAML (its base config is used)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="override a train config key, e.g. --set train.max_length=256",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_data)


def _add_test(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`sftune test STUDY`: the best trials retrained and evaluated once on the test split."""
    p = sub.add_parser(
        "test",
        help="retrain the best trial (or top K) and evaluate it once on the held-out test split",
        description="Needs data.test or data.test_fraction in the base config; "
        "stores test_metrics on each trial and on the study.",
    )
    _study_options(p)
    p.add_argument("--top", type=int, default=1, help="how many of the best trials to test (default 1)")
    p.set_defaults(func=cmd_test)


def _add_spaces(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`sftune spaces`: the shipped search spaces and studies."""
    p = sub.add_parser("spaces", help="list the search spaces and studies that ship with sftune")
    p.set_defaults(func=cmd_spaces)


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
    except Exception as exc:
        faults = sys.modules.get("search.storage._faults")  # imported by then if the study's storage failed
        if faults is not None and isinstance(exc, faults.StorageFailure):
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return EXIT_STORAGE
        raise


if __name__ == "__main__":
    sys.exit(main())
