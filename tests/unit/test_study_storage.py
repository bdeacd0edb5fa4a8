"""The study storage on SQLite without Ray: seeds on resume, checks at open, faults (canaries of the private
reaches into Optuna: tests/unit/test_optuna_door.py)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
import tiny
import yaml
from optuna.trial import TrialState

from search import storage as sftune_storage
from search.cli import main
from search.config import load_study
from search.space import sample_params
from search.storage import StorageFailure, _faults, _rdb, close_study, open_storage, rdb_storage, storage_problem
from search.study import open_study
from trainer import ConfigError


def _cfg(tmp: Path, model: Path, **extra):
    return load_study(tiny.study_file(tmp, model, **extra))


def _run_trials(study: optuna.Study, cfg, n: int) -> list[dict]:
    seen = []
    for _ in range(n):
        trial = study.ask()
        seen.append(sample_params(trial, cfg.space))
        study.tell(trial, 0.5)
    return seen


def test_driver_study_reads_running_trials_less_often_but_sees_its_own_writes(tmp_path: Path, bert_dir: Path) -> None:
    """ReadLessOften subclasses Optuna's private _CachedStorage (canary: the method it throttles is the
    one get_all_trials calls); a state change by this driver is seen at once, another driver's within
    REFRESH_S."""
    import inspect

    assert "_read_trials_from_remote_storage" in inspect.getsource(optuna.storages._CachedStorage.get_all_trials)
    cfg = _cfg(tmp_path, bert_dir)
    study, other = open_study(cfg), open_study(cfg)
    assert isinstance(study._storage, sftune_storage.ReadLessOften)
    reads = []
    backend = rdb_storage(study)
    original = backend._get_trials
    backend._get_trials = lambda *a, **k: reads.append(1) or original(*a, **k)  # count the database reads
    mine = study.ask()
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    before = len(reads)
    for _ in range(20):  # a burst of pruning decisions: one read between them
        study.get_trials(deepcopy=False)
    assert len(reads) - before <= 1
    study.tell(mine, 0.5)  # this driver's own tell: seen at once
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]
    theirs = other.ask()  # another driver's trial: seen once REFRESH_S has passed
    time.sleep(sftune_storage.ReadLessOften.REFRESH_S + 0.05)
    assert [t.number for t in study.get_trials(states=(TrialState.RUNNING,))] == [theirs.number]


def test_driver_cache_shows_this_process_writes_at_once(
    tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An intermediate value, a user attribute and a system attribute written by this process are in its
    next `get_trials`, without waiting for REFRESH_S; another driver's still waits for it (the cache stays)."""
    monkeypatch.setattr(sftune_storage.ReadLessOften, "REFRESH_S", 3600.0)
    cfg = _cfg(tmp_path, bert_dir)
    study, other = open_study(cfg), open_study(cfg)
    trial = study.ask()
    study.get_trials()  # the cache has read the running trial
    trial.report(0.25, 3)
    trial.set_user_attr("history", [{"step": 3}])
    sftune_storage.StudyHandle.of(study).storage.set_trial_system_attr(trial._trial_id, "rung_0", 0.25)
    [seen] = study.get_trials(deepcopy=False)
    assert seen.intermediate_values == {3: 0.25}
    assert seen.user_attrs["history"] == [{"step": 3}] and seen.system_attrs["rung_0"] == 0.25
    # another driver writes to the same trial: not seen before REFRESH_S
    sftune_storage.StudyHandle.of(other).storage.set_trial_user_attr(trial._trial_id, "theirs", 1)
    assert "theirs" not in study.get_trials(deepcopy=False)[0].user_attrs


def _decisions(study: optuna.Study) -> list[tuple[int, int, bool]]:
    """Four trials reporting side by side, step by step, as a driver judges them; each (trial, step, pruned)."""
    values = {0: [0.9, 0.8, 0.85, 0.9], 1: [0.1, 0.2, 0.3, 0.4], 2: [0.5, 0.6, 0.9, 0.95], 3: [0.7, 0.2, 0.1, 0.3]}
    trials = [study.ask() for _ in values]
    out, alive = [], set(values)
    for step in range(4):
        for n in sorted(alive):
            trials[n].report(values[n][step], step + 1)
            pruned = trials[n].should_prune()
            out.append((n, step + 1, pruned))
            if pruned:
                study.tell(trials[n], state=TrialState.PRUNED)
                alive.discard(n)
    for n in alive:
        study.tell(trials[n], values[n][-1])
    return out


@pytest.mark.parametrize(
    "pruner",
    [
        lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
        lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=4, reduction_factor=2),
    ],
    ids=["successive-halving", "hyperband"],
)
def test_rung_pruners_decide_on_the_driver_cache_as_in_plain_optuna(
    tmp_path: Path, pruner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Successive halving and hyperband write each rung value as a system attribute and read the others'
    back through get_trials: on the driver's cache every one is seen at once, so each decision is plain
    Optuna's (before, a rung value written within REFRESH_S was missed and a trial was promoted)."""
    monkeypatch.setattr(sftune_storage.ReadLessOften, "REFRESH_S", 3600.0)
    plain = optuna.create_study(
        study_name="s", storage=f"sqlite:///{tmp_path / 'plain.db'}", direction="maximize", pruner=pruner()
    )
    ours = optuna.create_study(
        storage=sftune_storage.ReadLessOften(open_storage(f"sqlite:///{tmp_path / 'o.db'}")),
        study_name="s",
        direction="maximize",
        pruner=pruner(),
    )  # hyperband: brackets by name
    expected = _decisions(plain)
    assert any(pruned for *_, pruned in expected)
    assert _decisions(ours) == expected


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_seeded_sampler_reproduces_fresh_and_continues_on_resume(tmp_path: Path, bert_dir: Path, sampler: str) -> None:
    one = _cfg(tmp_path / "a", bert_dir, sampler={"name": sampler, "seed": 3})
    two = _cfg(tmp_path / "b", bert_dir, sampler={"name": sampler, "seed": 3})
    first = _run_trials(open_study(one), one, 3)
    assert _run_trials(open_study(two), two, 3) == first  # same seed, fresh study: same sequence
    resumed = _run_trials(open_study(one), one, 3)  # same study again: it goes on, no replay
    assert not any(p in first for p in resumed)
    # two drivers joining the same study at once do not mirror each other
    a, b = open_study(one), open_study(one)
    ta, tb = a.ask(), b.ask()
    assert sample_params(ta, one.space) != sample_params(tb, one.space)


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


def _bad_run(path: Path, capsys: pytest.CaptureFixture, *extra: str) -> str:
    assert main(["run", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _finished_study(tmp: Path, model: Path, n: int = 2, **extra) -> tuple[Path, Path]:
    path = tiny.study_file(tmp, model, n_trials=n, **extra)
    cfg = load_study(path)
    study = open_study(cfg)
    _run_trials(study, cfg, n)
    close_study(study)
    assert not (tmp / "s.db-wal").exists()  # closed: the file alone is the study
    return path, tmp / "s.db"


def test_resume_with_another_base_config_is_refused_then_allowed(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path, db = _finished_study(tmp_path, bert_dir)
    before = _bytes(db)
    err = _bad_run(path, capsys, "--set", "base.train.max_steps=40")
    assert "base: study 's' was created with another base config" in err
    assert "train.max_steps: 30 -> 40" in err and "--allow-base-change" in err
    tiny.write_jsonl(tmp_path / "data" / "train.jsonl", tiny.sentiment_rows(240, seed=9))  # other data
    err = _bad_run(path, capsys)
    assert "data.train" in err and "content differs" in err
    assert _bytes(db) == before
    # on purpose: the run goes on (here: nothing left to run, so no Ray), with a note
    assert main(["run", str(path), "--allow-base-change"]) == 0
    out = capsys.readouterr().out
    assert "continuing with a changed base config" in out and "data.train" in out and "nothing to run" in out


def test_a_study_from_before_train_precision_resumes_but_a_changed_precision_is_named(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path, db = _finished_study(tmp_path, bert_dir)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    record = study.user_attrs[sftune_storage.BASE_ATTR]
    for part in ("config", "compared"):  # as an sftune without the field stored it
        del record[part]["train"]["precision"]
    study.set_user_attr(sftune_storage.BASE_ATTR, record)
    close_study(study)
    assert main(["run", str(path)]) == 0  # nothing to run, and no base change claimed
    assert "nothing to run" in capsys.readouterr().out
    err = _bad_run(path, capsys, "--set", "base.train.precision=fp32")
    assert "train.precision: None -> 'fp32'" in err


def test_same_data_in_another_folder_and_other_threads_match(tmp_path: Path, bert_dir: Path) -> None:
    path, _ = _finished_study(tmp_path / "one", bert_dir)
    other = tmp_path / "two"
    shutil.copytree(tmp_path / "one" / "data", other / "data")
    data = yaml.safe_load(path.read_text())
    data["base"]["data"] = {
        "train": str(other / "data" / "train.jsonl"),
        "validation": str(other / "data" / "val.jsonl"),
    }
    data["base"]["train"]["threads"] = 3
    data["base"]["output_dir"] = str(other / "out")
    data["storage"] = f"sqlite:///{tmp_path / 'one' / 's.db'}"
    moved = tiny.write_config(other / "s.yaml", data)
    assert len(open_study(load_study(moved)).trials) == 2  # no complaint


def test_incompatible_space_is_refused_before_any_trial(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    path, db = _finished_study(tmp_path, bert_dir)
    before = _bytes(db)
    data = yaml.safe_load(path.read_text())
    data["space"]["peft.r"] = {"type": "categorical", "choices": [2, 4, 8]}  # was an int range
    data["space"]["train.learning_rate"]["log"] = False
    path.write_text(yaml.safe_dump(data))
    err = _bad_run(path, capsys)
    assert "2 problems" in err and "peft.r: the study's trials sampled it from IntDistribution" in err
    assert "train.learning_rate" in err and "log" in err
    assert _bytes(db) == before
    data["space"] = {"train.learning_rate": {"type": "float", "low": 2e-3, "high": 5e-3, "log": True}}  # narrower
    path.write_text(yaml.safe_dump(data))
    assert len(open_study(load_study(path)).trials) == 2  # compatible: fine


def test_a_file_that_is_not_a_database(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = tiny.study_file(tmp_path, bert_dir)
    db = tmp_path / "s.db"
    db.write_text("name,value\nnot,a database\n" * 100)
    before = _bytes(db)
    err = _bad_run(path, capsys)
    assert "storage: cannot open study storage" in err and "corrupted (or is not a SQLite database)" in err
    assert _bytes(db) == before


def test_a_database_corrupted_mid_file(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path, db = _finished_study(tmp_path, bert_dir, n=6)
    data = bytearray(db.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8192] = b"\xa5" * 8192
    db.write_bytes(bytes(data))
    err = _bad_run(path, capsys)
    assert "corrupted" in err and "storage" in err
    assert _bytes(db) == bytes(data)


def test_a_read_only_database(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path, db = _finished_study(tmp_path, bert_dir)
    before = _bytes(db)
    err = _bad_run(path, capsys, "--storage", f"sqlite:///file:{db}?mode=ro&uri=true")
    assert "the study database is read-only, and sftune must write to it" in err
    assert _bytes(db) == before


def test_a_read_only_database_file(tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes to read-only files; the mode=ro test covers this here")
    path, db = _finished_study(tmp_path, bert_dir)
    before = _bytes(db)
    db.chmod(0o444)
    err = _bad_run(path, capsys)
    assert "read-only" in err
    assert _bytes(db) == before


def test_storage_problem_names_real_database_errors(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    db.write_bytes(b"\x00" * 4096)
    with pytest.raises(sqlite3.DatabaseError) as corrupt:
        sqlite3.connect(db).execute("select * from sqlite_master").fetchall()
    assert "corrupted" in storage_problem(corrupt.value)
    good = tmp_path / "y.db"
    sqlite3.connect(good).execute("create table t (x)")
    with pytest.raises(sqlite3.OperationalError) as ro:
        sqlite3.connect(f"file:{good}?mode=ro", uri=True).execute("insert into t values (1)")
    assert "read-only" in storage_problem(ro.value)
    assert storage_problem(ValueError("no")) is None
    assert storage_problem(KeyError("database is locked")) is None  # not a database error


def test_a_locked_database_is_retried_not_failed(
    tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_rdb, "SQLITE_BUSY_S", 0)  # SQLite's own wait off: every lock reaches our retry
    cfg = _cfg(tmp_path, bert_dir)
    study = open_study(cfg)
    storage = rdb_storage(study)
    holder = sqlite3.connect(tmp_path / "s.db", isolation_level=None, check_same_thread=False)
    trial = study.ask()
    # (In write-ahead-log mode readers are never blocked, and Optuna retries a trial's creation on its
    # own: the writes of `tell` are where our retry shows.)
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(1.0, lambda: holder.execute("COMMIT")).start()
    before = storage.retries
    study.tell(trial, 0.7)  # blocked for a second by the other writer, then goes through
    assert storage.retries > before
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    monkeypatch.setattr(_faults, "RETRY_FOR_S", 0.5)
    trial = study.ask()
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageFailure, match="stayed locked by other writers"):
            study.tell(trial, 0.5)
    finally:
        holder.execute("COMMIT")


def test_once_the_database_has_failed_no_call_waits_out_retries_of_its_own(
    tmp_path: Path, bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One deadline for every call on the storage, from the first failure: the first blocked call waits
    RETRY_FOR_S, each later one (any thread) fails at once; a call the fault does not touch (a read, in
    write-ahead-log mode) still goes through. A lock that clears within the window is retried through."""
    monkeypatch.setattr(_rdb, "SQLITE_BUSY_S", 0)
    monkeypatch.setattr(_faults, "RETRY_FOR_S", 1.5)
    cfg = _cfg(tmp_path, bert_dir)
    study = open_study(cfg)
    trials = [study.ask() for _ in range(4)]
    holder = sqlite3.connect(tmp_path / "s.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    threading.Timer(0.7, lambda: holder.execute("COMMIT")).start()
    study.tell(trials[0], 0.5)  # a lock shorter than RETRY_FOR_S: retried through, the deadline cleared
    holder.execute("BEGIN EXCLUSIVE")  # now the database stays locked: as good as gone for writers

    def failing_tell(trial: optuna.Trial) -> float:
        started = time.monotonic()
        with pytest.raises(StorageFailure, match=r"stayed locked by other writers \(retried for 1.5 s\)"):
            study.tell(trial, 0.5)
        return time.monotonic() - started

    try:
        assert failing_tell(trials[1]) >= 1.4  # the whole window, counted afresh
        later: list[float] = []
        threads = [threading.Thread(target=lambda t=t: later.append(failing_tell(t))) for t in trials[2:]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(later) == 2 and max(later) < 1.0, later  # no second window, in any thread
        assert len(study.get_trials()) == 4  # reads are not blocked: they go through
    finally:
        holder.execute("COMMIT")
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] + [TrialState.RUNNING] * 3


FULL_DISK_DRIVER = textwrap.dedent("""
    import resource, sqlite3, sys, os
    from sqlalchemy import event
    from search.config import load_study
    from search.storage import StorageFailure, rdb_storage
    from search.study import open_study
    cfg = load_study(sys.argv[1])
    study = open_study(cfg)
    if sys.argv[3] == "rlimit":  # the file may not grow any more (SIGXFSZ is ignored by Python)
        size = os.path.getsize(sys.argv[2])
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 8192, size + 8192))
    else:  # SQLite's own limit: the database is full at a few more pages
        pages = sqlite3.connect(sys.argv[2]).execute("PRAGMA page_count").fetchone()[0]
        engine = rdb_storage(study).engine
        event.listen(engine, "connect", lambda con, _: con.execute(f"PRAGMA max_page_count={pages + 3}"))
        engine.dispose()
    try:
        for i in range(500):
            t = study.ask()
            t.set_user_attr("history", ["x" * 500] * 4)
            study.tell(t, 0.5)
    except StorageFailure as exc:
        print("FAILED:", exc)
        sys.exit(1)
    print("never full")
""")


@pytest.mark.parametrize(
    "limit,sentence",
    [
        ("pages", "the disk holding the study database is full"),
        ("rlimit", "failed with a disk I/O error (a full disk, a file size limit"),
    ],
)
def test_a_full_disk_is_one_storage_failure_and_keeps_what_was_stored(
    tmp_path: Path, bert_dir: Path, limit: str, sentence: str
) -> None:
    path = tiny.study_file(tmp_path, bert_dir)
    db = tmp_path / "s.db"
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK_DRIVER, str(path), str(db), limit], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert sentence in proc.stdout and "Traceback" not in proc.stderr
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{db}")
    trials = study.trials
    assert trials and sum(t.state == TrialState.COMPLETE for t in trials) >= 1
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_cli_turns_a_storage_failure_into_one_line_and_exit_1(tmp_path: Path, bert_dir: Path) -> None:
    """`sftune status` on a database whose trial values page is garbage (the schema is fine, so it opens):
    the failure comes mid-command, as a StorageFailure."""
    path, db = _finished_study(tmp_path, bert_dir, n=2)
    con = sqlite3.connect(db)
    page = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("select rootpage from sqlite_master where name='trial_values'").fetchone()[0]
    con.close()
    data = bytearray(db.read_bytes())
    data[(root - 1) * page : root * page] = b"\xff" * page
    db.write_bytes(bytes(data))
    proc = subprocess.run(
        [sys.executable, "-m", "search", "status", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: study storage sqlite:///{db}: the study database file is corrupted (or is not a SQLite database); "
        "the study cannot be read"
    ]
    assert db.read_bytes() == bytes(data)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_database_works_as_with_optuna_storage(url: str) -> None:
    """sftune's storage keeps the one connection an in-memory database lives in (it used to close it right
    after creating the tables: "no such table: studies" on the first call); close_study leaves it open."""
    for storage in (_rdb.SftuneStorage(url), open_storage(url)):
        study = optuna.create_study(storage=sftune_storage.ReadLessOften(storage), study_name="m")
        for x in (0.5, 0.25):
            trial = study.ask()
            trial.report(x, 1)
            study.tell(trial, x)
        close_study(study)
        again = optuna.load_study(study_name="m", storage=storage)
        assert [t.value for t in again.trials] == [0.5, 0.25] and again.trials[0].intermediate_values == {1: 0.5}


def test_bad_heartbeat_setting_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFTUNE_HEARTBEAT_INTERVAL", "soon")
    with pytest.raises(ConfigError, match="SFTUNE_HEARTBEAT_INTERVAL"):
        open_storage("sqlite://")
    monkeypatch.setenv("SFTUNE_HEARTBEAT_INTERVAL", "10")
    monkeypatch.setenv("SFTUNE_HEARTBEAT_GRACE", "5")
    with pytest.raises(ConfigError, match="more than the heartbeat interval"):
        open_storage("sqlite://")


def test_drivers_opening_a_new_database_together_all_get_it(tmp_path: Path) -> None:
    """Their table creation races (`table studies already exists`): the loser retries, no error."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def opener() -> None:
        barrier.wait()
        try:
            open_storage(url).get_all_studies()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
