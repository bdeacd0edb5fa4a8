"""Canaries of the one door to Optuna's private names (search/storage/_optuna.py): one test per reach,
each failing with the name Optuna moved or changed. Optuna is bounded in pyproject to the minor version
these pass on; when a new one fails here, the fix is in the door alone."""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path
from typing import ClassVar

import optuna
import pytest
import tiny
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from search.config import load_study
from search.storage import _optuna as door
from search.storage import _rdb, count_states, finished, rdb_storage
from search.study import open_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sqlite_study(tmp_path: Path, name: str = "s") -> optuna.Study:
    """A study on a SQLite file, as Optuna opens one from a URL (its cache wrapper over an RDB storage)."""
    url = f"sqlite:///{tmp_path / 'door.db'}"
    optuna.create_study(study_name="another", storage=url)  # so that ids and numbers differ
    return optuna.create_study(study_name=name, storage=url)


def _params(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


# ---- attributes of Optuna's objects ----------------------------------------------------------------


def test_storage_of_is_the_storage_the_study_holds(tmp_path: Path) -> None:
    """Study._storage."""
    study = _sqlite_study(tmp_path)
    assert "_storage" in vars(study), "optuna.Study no longer keeps its storage as `_storage`"
    assert isinstance(door.storage_of(study), optuna.storages.BaseStorage)
    memory = optuna.create_study()
    assert isinstance(door.storage_of(memory), optuna.storages.InMemoryStorage)


def test_study_id_of_is_the_id_in_storage(tmp_path: Path) -> None:
    """Study._study_id."""
    study = _sqlite_study(tmp_path)
    assert "_study_id" in vars(study), "optuna.Study no longer keeps its id as `_study_id`"
    storage = door.storage_of(study)
    assert door.study_id_of(study) == storage.get_study_id_from_name("s") != storage.get_study_id_from_name("another")


def test_trial_id_of_a_trial_and_a_frozen_trial_is_its_id_in_storage(tmp_path: Path) -> None:
    """Trial._trial_id and FrozenTrial._trial_id."""
    study = _sqlite_study(tmp_path)
    other = optuna.load_study(study_name="another", storage=f"sqlite:///{tmp_path / 'door.db'}")
    other.tell(other.ask(), 0.0)  # so trial ids and numbers differ
    trial = study.ask()
    assert "_trial_id" in vars(trial), "optuna.Trial no longer keeps its id as `_trial_id`"
    storage = door.storage_of(study)
    expected = storage.get_trial_id_from_study_id_trial_number(door.study_id_of(study), trial.number)
    assert door.trial_id_of(trial) == expected != trial.number
    study.tell(trial, 0.5)
    frozen = study.trials[0]
    assert "_trial_id" in vars(frozen), "optuna.trial.FrozenTrial no longer keeps its id as `_trial_id`"
    assert door.trial_id_of(frozen) == expected
    assert "trial_id" in _params(FrozenTrial), "FrozenTrial(...) no longer takes `trial_id`"


def test_backend_of_is_the_rdb_storage_under_the_cache_wrapper(tmp_path: Path) -> None:
    """_CachedStorage._backend."""
    study = _sqlite_study(tmp_path)
    storage = door.storage_of(study)
    assert isinstance(storage, optuna.storages._CachedStorage), "a study opened from a URL is no longer cached"
    assert "_backend" in vars(storage), "optuna's _CachedStorage no longer keeps its storage as `_backend`"
    assert isinstance(door.backend_of(storage), optuna.storages.RDBStorage)
    memory = optuna.storages.InMemoryStorage()
    assert door.backend_of(memory) is memory


def test_cached_trials_are_the_finished_trials_the_cache_hands_out(tmp_path: Path) -> None:
    """_CachedStorage._studies[study_id].trials: changing one there changes what the cache returns (what
    search/artifacts.py relies on when it removes a finished trial's attributes)."""
    study = _sqlite_study(tmp_path)
    trial = study.ask()
    trial.set_user_attr("x", 1)
    study.tell(trial, 0.5)
    storage = door.storage_of(study)
    storage.get_all_trials(door.study_id_of(study))
    cached = door.cached_trials(storage, door.study_id_of(study))
    assert [door.trial_id_of(t) for t in cached] == [door.trial_id_of(trial)], (
        "optuna's _CachedStorage no longer keeps trials in `_studies[study_id].trials`"
    )
    cached[0].user_attrs.pop("x")
    assert "x" not in storage.get_trial(door.trial_id_of(trial)).user_attrs, "the cache hands out other copies"
    assert door.cached_trials(optuna.storages.InMemoryStorage(), 0) == []


@pytest.mark.parametrize(
    "model,columns",
    [
        ("TrialModel", ("trial_id", "study_id", "number", "state")),
        ("TrialValueModel", ("trial_id", "objective", "value", "value_type")),
        ("TrialHeartbeatModel", ("trial_heartbeat_id", "trial_id", "heartbeat")),
        ("TrialParamModel", ("trial_id", "param_name", "distribution_json")),
        ("TrialUserAttributeModel", ("trial_id", "key", "value_json")),
        ("TrialSystemAttributeModel", ("trial_id", "key")),
    ],
)
def test_rdb_models_have_the_tables_and_columns_sftune_queries(model: str, columns: tuple[str, ...]) -> None:
    """optuna.storages._rdb.models: the tables and columns of sftune's own queries and writes."""
    models = door.rdb_models()
    assert hasattr(models, model), f"optuna.storages._rdb.models.{model} is gone"
    have = set(getattr(models, model).__table__.columns.keys())
    assert set(columns) <= have, f"{model} lost column(s) {sorted(set(columns) - have)}"
    if model == "TrialValueModel":
        assert {"FINITE", "INF_POS", "INF_NEG"} <= set(models.TrialValueModel.TrialValueType.__members__)


# ---- private hooks -------------------------------------------------------------------------------


def test_cached_storage_base_reads_through_the_hook_get_all_trials_calls(tmp_path: Path) -> None:
    """_CachedStorage._read_trials_from_remote_storage: what get_all_trials calls first."""
    hook = optuna.storages._CachedStorage._read_trials_from_remote_storage
    assert _params(hook) == ["self", "study_id"], "_read_trials_from_remote_storage changed its signature"
    assert "_read_trials_from_remote_storage" in inspect.getsource(optuna.storages._CachedStorage.get_all_trials)

    class Counting(door.CachedStorageBase):
        reads: ClassVar[list[int]] = []

        def read_trials(self, study_id: int) -> None:
            self.reads.append(study_id)
            self.read_trials_now(study_id)

    url = f"sqlite:///{tmp_path / 'door.db'}"
    first = optuna.create_study(study_name="s", storage=url)
    first.tell(first.ask(), 1.0)
    storage = Counting(optuna.storages.RDBStorage(url))
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]
    assert Counting.reads, "get_all_trials no longer reads through _read_trials_from_remote_storage"


def test_cached_storage_base_updates_the_copy_the_cache_keeps(tmp_path: Path) -> None:
    """_CachedStorage._studies[...].trials, found through _trial_id_to_study_id_and_number, under _lock."""
    url = f"sqlite:///{tmp_path / 'door.db'}"
    optuna.create_study(study_name="another", storage=url).ask()  # ids and numbers differ
    storage = door.CachedStorageBase(optuna.storages.RDBStorage(url))
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    before = study.get_trials(deepcopy=False)
    assert door.trial_id_of(before[0]) in storage._trial_id_to_study_id_and_number, (
        "_CachedStorage no longer maps trial ids in `_trial_id_to_study_id_and_number`"
    )

    def change(t: FrozenTrial) -> None:
        t.user_attrs = {"seen": 1}

    storage.update_cached_trial(door.trial_id_of(trial), change)
    storage.update_cached_trial(10_000, change)  # not cached: nothing
    after = storage._studies[door.study_id_of(study)].trials[0]
    assert after.user_attrs == {"seen": 1} and after is not before[0], (
        "_CachedStorage no longer keeps its trials in `_studies[study_id].trials[number]`"
    )
    assert before[0].user_attrs == {}  # what was handed out before keeps its copy


def test_every_private_backend_method_the_cache_calls_is_listed_and_retried(tmp_path: Path, bert_dir: Path) -> None:
    """Fails loudly when Optuna moves what sftune reaches privately (study._storage, its _backend, the
    table models and RDBStorage._get_stale_trial_ids that fail_stale_trials calls). (Folded in from
    tests/unit/test_study_storage.py, assertions unchanged.)"""
    cfg = load_study(tiny.study_file(tmp_path, bert_dir))
    study = open_study(cfg)
    assert isinstance(rdb_storage(study), _rdb.SftuneStorage)
    models = door.rdb_models()
    for name in ("TrialModel", "TrialValueModel", "TrialHeartbeatModel", "TrialParamModel"):
        assert hasattr(models, name), name
    assert {"FINITE", "INF_POS", "INF_NEG"} <= set(models.TrialValueModel.TrialValueType.__members__)
    assert hasattr(optuna.storages.RDBStorage, "_get_stale_trial_ids")
    # every backend method Optuna's cache wrapper calls is one our storage retries
    called = set(re.findall(r"_backend\.(\w+)", inspect.getsource(optuna.storages._CachedStorage)))
    assert called <= set(_rdb._WRAPPED) | {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback"}
    trial = study.ask()
    assert count_states(study)["RUNNING"] == 1
    study.tell(trial, 0.5)
    assert finished(study) == 1
    # and the door's list of them is exactly what the cache calls privately, each present on RDBStorage
    assert {n for n in called if n.startswith("_")} == door.CACHE_CALLS_ON_BACKEND
    for name in door.CACHE_CALLS_ON_BACKEND:
        assert callable(getattr(optuna.storages.RDBStorage, name, None)), f"RDBStorage.{name} is gone"


def test_rdb_storage_base_decides_what_fail_stale_trials_fails(tmp_path: Path) -> None:
    """RDBStorage._get_stale_trial_ids: what optuna.storages.fail_stale_trials asks (through the cache)."""
    assert _params(optuna.storages.RDBStorage._get_stale_trial_ids) == ["self", "study_id"], (
        "RDBStorage._get_stale_trial_ids changed its signature"
    )
    assert "_get_stale_trial_ids" in inspect.getsource(optuna.storages.fail_stale_trials), (
        "fail_stale_trials no longer asks the storage's _get_stale_trial_ids"
    )
    assert "_get_stale_trial_ids" in inspect.getsource(optuna.storages._CachedStorage), (
        "_CachedStorage no longer passes _get_stale_trial_ids to its backend"
    )

    class FirstIsStale(door.RDBStorageBase):
        def stale_trial_ids(self, study_id: int) -> list[int]:
            assert self.optuna_stale_trial_ids(study_id) == []  # Optuna's own judgement: no heartbeat is late
            return [self.get_trial_id_from_study_id_trial_number(study_id, 0)]

    backend = FirstIsStale(f"sqlite:///{tmp_path / 'door.db'}", heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(study_name="s", storage=optuna.storages._CachedStorage(backend))
    study.ask()
    study.ask()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING], (
        "fail_stale_trials no longer fails what _get_stale_trial_ids names"
    )
    # sftune's storage retries the door's hook, and overrides no private name of its own
    assert issubclass(_rdb.SftuneStorage, door.RDBStorageBase)
    assert vars(_rdb.SftuneStorage)["_get_stale_trial_ids"].__wrapped__ is door.RDBStorageBase._get_stale_trial_ids


def test_tpe_sampler_base_hands_tpe_the_study_for_sampling() -> None:
    """TPESampler._sample(study, trial, search_space): where TPE reads the trials it splits."""
    assert _params(optuna.samplers.TPESampler._sample) == ["self", "study", "trial", "search_space"], (
        "TPESampler._sample changed its signature"
    )
    seen: list[object] = []

    class Watching(door.TPESamplerBase):
        def study_for_sampling(self, study: optuna.Study) -> optuna.Study:
            seen.append(study)
            return study

    study = optuna.create_study(sampler=Watching(seed=0, n_startup_trials=2))
    for _ in range(4):
        trial = study.ask({"x": FloatDistribution(0.0, 1.0)})
        study.tell(trial, trial.params["x"])
    assert seen and all(s is study for s in seen), "TPESampler no longer samples through _sample"


def test_with_trials_shown_as_is_what_tpe_reads() -> None:
    """Study._get_trials(deepcopy, states, use_cache): what TPESampler._sample reads."""
    assert _params(optuna.Study._get_trials) == ["self", "deepcopy", "states", "use_cache"], (
        "Study._get_trials changed its signature"
    )
    assert "study._get_trials(" in inspect.getsource(optuna.samplers.TPESampler._sample), (
        "TPESampler._sample no longer reads the trials through study._get_trials"
    )
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.5})
    study.ask({"x": FloatDistribution(0.0, 1.0)})
    shown = door.with_trials_shown_as(
        study,
        lambda t: FrozenTrial(
            number=t.number,
            state=TrialState.COMPLETE,
            value=1.0,
            values=None,
            datetime_start=t.datetime_start,
            datetime_complete=None,
            params=t.params,
            distributions=t.distributions,
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=door.trial_id_of(t),
        ),
    )
    assert [t.state for t in shown._get_trials(deepcopy=False, states=None, use_cache=False)] == [TrialState.COMPLETE]
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]  # the stored trial never changes
    assert shown.study_name == study.study_name  # everything else is the study's
