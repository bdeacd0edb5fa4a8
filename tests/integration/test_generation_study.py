"""A study that optimises what the model generates: a tiny random Llama learns short sums written as text on two
CPU cores; exact match rises from near 0 across evaluations, and the pruner stops a trial that does not learn."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import tiny
from optuna.trial import TrialState

from search.cli import main

pytestmark = pytest.mark.integration

GOOD, BAD = 1e-2, 1e-5
"""Learning rates: one learns the sums in ~250 steps, the other learns nothing in that time."""


def test_exact_match_rises_and_the_pruner_acts_on_it(
    tmp_path: Path, llama_dir: Path, ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optuna_dashboard import get_note

    monkeypatch.chdir(tmp_path)
    base = tiny.sft_config(tmp_path, llama_dir, max_steps=250, eval_every=25, batch_size=16)  # "add 3 and 4 :" -> " 7"
    base["peft"] = {"method": "full"}
    base["eval"] = {"metrics": ["exact_match"], "extract": "last_number", "max_new_tokens": 3, "show": 2}
    path = tiny.write_config(
        tmp_path / "sums.yaml",
        {
            "name": "sums",
            "objective": {"metric": "exact_match"},
            # seed 0 draws BAD, GOOD, BAD: the last starts once both others are complete, and falls behind them
            "sampler": {"name": "random", "seed": 0},
            "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
            "budget": {"n_trials": 3, "concurrency": 1},
            "resources": {"cpu": 1},
            "base": base,
            "space": {"train.learning_rate": {"type": "categorical", "choices": [GOOD, BAD]}},
            "output_dir": str(tmp_path / "runs"),
        },
    )
    assert main(["run", str(path)]) == 0

    study = optuna.load_study(study_name="sums", storage=f"sqlite:///{tmp_path / 'sums.db'}")
    trials = study.trials
    assert [t.params["train.learning_rate"] for t in trials] == [BAD, GOOD, BAD]
    assert TrialState.RUNNING not in [t.state for t in trials]

    learned = trials[1]
    assert learned.state == TrialState.COMPLETE
    curve = [learned.intermediate_values[s] for s in sorted(learned.intermediate_values)]
    assert len(curve) == 10 and curve[0] <= 0.2 and curve[-1] >= 0.5, curve  # from near 0 to well above it
    assert learned.value == curve[-1] and study.best_trial.number == 1

    assert trials[0].state == TrialState.COMPLETE  # nothing to compare with yet: it runs to its end
    assert max(trials[0].intermediate_values.values()) < 0.2
    assert trials[2].state == TrialState.PRUNED, [t.state for t in trials]  # behind the median: stopped early
    assert max(trials[2].intermediate_values) < 250

    kept = learned.user_attrs["generations"]  # what the numbers mean: prompts, outputs, references
    assert kept["step"] == 250 and len(kept["samples"]) == 2 and kept["samples"][0]["prompt"].startswith("add ")
    note = get_note(optuna.trial.Trial(study, learned._trial_id))
    assert "Sample generations at step 250" in note and "exact_match" in note
