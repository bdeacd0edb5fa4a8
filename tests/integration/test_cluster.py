"""`sftune run --address` on real clusters started with `ray start` on this machine (two nodes, token
auth on and off), the checks made before any trial, no Ray process outliving a killed driver, and the
canary of the Ray door's reach that needs a cluster (preloaded workers, search/_ray/_internals.py)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import tiny
from _raynodes import Cluster, free_port, node_env
from optuna.trial import TrialState

from search._ray.cluster import runs_a_raylet
from search._ray.reaper import descendants, process_table

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    """A head and a second node, 1 CPU each, no token auth (the lost-node test, last here, stops the second)."""
    cluster = Cluster(workers=1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def token_cluster() -> Iterator[Cluster]:
    cluster = Cluster(token=secrets.token_hex(32))
    yield cluster
    cluster.stop()


def _env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    env = dict(base if base is not None else node_env(None))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _cmd(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "search", "run", str(path), *args]


def _sftune(path: Path, *args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(path, *args), capture_output=True, text=True, env=env, timeout=timeout)


def _trials(tmp: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp / (name + '.db')}").trials


def _no_trials(tmp: Path, name: str) -> bool:
    try:
        return _trials(tmp, name) == []
    except KeyError:  # the study was never created
        return True


def _bad_input(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    return run.stderr


# ---- a two-node cluster -------------------------------------------------------------------------


def test_trials_spread_over_both_nodes_with_the_data_sent_through_ray(
    tmp_path: Path, bert_dir: Path, two_nodes: Cluster
) -> None:
    # One run checks both (each is a whole study on the cluster): every trial records where it ran,
    # the two concurrent trials ran on the two nodes, and no node read the data from a file.
    path = tiny.study_file(tmp_path, bert_dir, name="spread", n_trials=2, concurrency=2, max_steps=10)
    proc = subprocess.Popen(
        _cmd(path, "--address", two_nodes.address),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if "tokenized once" in line:  # the driver holds the data: no node may read it from a file now
            shutil.rmtree(tmp_path / "data")
            shutil.rmtree(tmp_path / "runs" / "cache", ignore_errors=True)
            break
    out = "".join(seen) + proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    assert f"ray: joined the cluster at {two_nodes.address} in" in out
    assert "(2 node(s), 2 CPUs, 0 GPUs)" in out
    assert not (tmp_path / "data").exists()
    trials = _trials(tmp_path, "spread")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, out
    assert all(t.user_attrs.get("host") for t in trials)
    assert {t.user_attrs.get("node") for t in trials} == {n.node_id() for n in two_nodes.nodes}


def test_a_two_worker_trial_trains_one_rank_on_each_node(tmp_path: Path, bert_dir: Path, two_nodes: Cluster) -> None:
    """`resources.workers: 2` on the two-node cluster `ray start` made (1 CPU each): each trial's two ranks are
    placed one per node, the study counts one trial per slot, and every rank process is gone afterwards."""
    path = tiny.study_file(
        tmp_path,
        bert_dir,
        name="ranks2",
        n_trials=2,
        concurrency=1,
        max_steps=10,
        eval_every=5,
        resources={"cpu": 1, "workers": 2},
    )
    run = _sftune(path, "--address", two_nodes.address, env=_env())
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    trials = _trials(tmp_path, "ranks2")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, out  # one trial per slot, never one per rank
    node_ids = {n.node_id() for n in two_nodes.nodes}
    for t in trials:
        ranks = t.user_attrs["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1]
        assert {r["node"] for r in ranks} == node_ids, ranks  # one rank per node
        assert sorted(t.intermediate_values) == [5, 10]
    pids = [r["pid"] for t in trials for r in t.user_attrs["ranks"]]
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if _alive(pid)], "rank processes left running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_more_cpus_per_trial_than_any_node_has(tmp_path: Path, bert_dir: Path, two_nodes: Cluster) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="big", n_trials=1)
    err = _bad_input(_sftune(path, "--address", two_nodes.address, "--set", "resources.cpu=2", env=_env()))
    assert (
        f"big.yaml: resources.cpu: each trial asks for 2 CPU, but no node of the cluster at "
        f"{two_nodes.address} offers that: the largest has 1 CPU and 0 GPU (2 node(s) alive)"
    ) in err
    assert _no_trials(tmp_path, "big")


# ---- token authentication -------------------------------------------------------------------------


def test_a_driver_without_the_token_is_told_how_to_give_it(
    tmp_path: Path, bert_dir: Path, token_cluster: Cluster
) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="notoken", n_trials=1)
    env = _env({k: v for k, v in token_cluster.env.items() if not k.startswith("RAY_AUTH_")})
    err = _bad_input(_sftune(path, "--address", token_cluster.address, env=env))
    assert f"--address: the Ray cluster at {token_cluster.address} uses token authentication" in err
    for way in ("RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN=", "RAY_AUTH_TOKEN_PATH=", "~/.ray/auth_token"):
        assert way in err
    wrong = _env(token_cluster.env, RAY_AUTH_TOKEN=secrets.token_hex(32))
    err = _bad_input(_sftune(path, "--address", token_cluster.address, env=wrong))
    assert "refused this driver's token" in err
    assert _no_trials(tmp_path, "notoken")


def test_ray_address_is_joined_with_the_token_as_ray_documents_it(
    tmp_path: Path, bert_dir: Path, token_cluster: Cluster
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(token_cluster.token or "")
    env = _env(
        {k: v for k, v in token_cluster.env.items() if k != "RAY_AUTH_TOKEN"},
        RAY_AUTH_TOKEN_PATH=str(token_file),
        RAY_ADDRESS=token_cluster.address,
    )
    path = tiny.study_file(tmp_path, bert_dir, name="token", n_trials=1, concurrency=1, max_steps=10)
    run = _sftune(path, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (
        f"ray: joined the cluster at {token_cluster.address} (from RAY_ADDRESS; unset it or pass "
        "--address local to run on a local cluster)"
    ) in run.stdout
    trials = _trials(tmp_path, "token")
    assert [t.state for t in trials] == [TrialState.COMPLETE]
    assert trials[0].user_attrs["node"] == token_cluster.nodes[0].node_id()


# ---- addresses no cluster answers ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS"])
def test_an_address_no_cluster_answers(tmp_path: Path, bert_dir: Path, how: str) -> None:
    address = f"127.0.0.1:{free_port()}"
    path = tiny.study_file(tmp_path, bert_dir, name="nowhere", n_trials=1)
    if how == "--address":
        run = _sftune(path, "--address", address, env=_env(), timeout=120)
    else:
        run = _sftune(path, env=_env(RAY_ADDRESS=address), timeout=120)  # Ray alone would retry for minutes
    err = _bad_input(run)
    assert f"{how}: no Ray cluster answers at {address}" in err
    assert ("leave out --address" if how == "--address" else "unset RAY_ADDRESS (or pass --address local)") in err
    assert _no_trials(tmp_path, "nowhere")


def test_auto_with_no_cluster_on_this_machine(tmp_path: Path, bert_dir: Path) -> None:
    if runs_a_raylet() is not False:
        pytest.skip("a Ray node runs on this machine (or /proc cannot tell): `auto` would find it")
    path = tiny.study_file(tmp_path, bert_dir, name="auto", n_trials=1)
    err = _bad_input(_sftune(path, "--address", "auto", env=_env(), timeout=120))
    assert "--address: auto: no running Ray cluster found on this machine" in err


# ---- a local cluster ----------------------------------------------------------------------------


def test_more_gpus_than_this_machine_has(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="gpu", n_trials=1)
    err = _bad_input(_sftune(path, "--set", "resources.gpu=1", env=_env(CUDA_VISIBLE_DEVICES=""), timeout=300))
    assert "gpu.yaml: resources.gpu: each trial asks for 1 GPU, but this machine has 0 GPU(s) that Ray can use" in err
    assert _no_trials(tmp_path, "gpu")


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 300) -> str:
    assert proc.stdout is not None
    seen = []
    deadline = time.time() + timeout
    for line in proc.stdout:
        seen.append(line)
        if text in line or time.time() > deadline:
            break
    assert text in seen[-1], "".join(seen)
    return "".join(seen)


def test_a_sigkilled_driver_leaves_no_ray_process_behind(tmp_path: Path, bert_dir: Path) -> None:
    path = tiny.study_file(tmp_path, bert_dir, name="reaped", n_trials=2, concurrency=2, max_steps=10)
    proc = subprocess.Popen(
        _cmd(path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), start_new_session=True
    )
    try:
        _wait_for_line(proc, "ray: started a local cluster")
        time.sleep(3)  # the idle workers Ray starts with the cluster are up
        started = descendants(proc.pid, process_table())  # the driver's Ray: GCS, raylet, agents, workers
        assert len(started) >= 5, started
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 30  # Ray's own agents linger about a minute after a SIGKILLed driver
        while time.time() < deadline:
            table = process_table()
            left = [p for p, t in started.items() if table.get(p, (0, -1))[1] == t]
            if not left:
                break
            time.sleep(0.5)
        assert left == [], [Path(f"/proc/{p}/cmdline").read_bytes()[:60] for p in left if Path(f"/proc/{p}").exists()]
    finally:
        for pid in descendants(proc.pid, process_table()):
            os.kill(pid, signal.SIGKILL)


# ---- the Ray door's reach that needs a cluster: preloaded workers (canary; the rest: tests/unit/test_ray_door.py)

CANARY = """
import json, sys, ray
from search._ray._internals import init_with_preload
from search._ray.cluster import warm_workers
preload = warm_workers({})
init_with_preload(preload, address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)

@ray.remote
def imported():
    return "search._ray.preload" in sys.modules

print(json.dumps(ray.get(imported.remote())))
ray.shutdown()
"""


def test_ray_workers_import_the_preload_module_before_any_work() -> None:
    run = subprocess.run([sys.executable, "-c", CANARY], capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) is True


# ---- last: it stops the second node of the shared two-node cluster -------------------------------


def test_a_lost_node_fails_its_trial_and_the_study_finishes_on_the_node_left(
    tmp_path: Path, bert_dir: Path, two_nodes: Cluster
) -> None:
    head, second = two_nodes.nodes
    name = "lost"
    path = tiny.study_file(tmp_path, bert_dir, name=name, n_trials=2, concurrency=2, max_steps=300)
    proc = subprocess.Popen(
        _cmd(path, "--address", two_nodes.address),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.5)
        if not (tmp_path / f"{name}.db").exists():
            continue  # opening it here would create the schema while the driver creates it
        try:
            running = [t for t in _trials(tmp_path, name) if t.state == TrialState.RUNNING and t.intermediate_values]
        except Exception:  # noqa: BLE001 - the driver is still creating the study
            continue
        victim = next((t for t in running if t.user_attrs.get("node") == second.node_id()), None)
    assert victim is not None, "no trial reached its first evaluation on the second node"
    second.kill()
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    trials = _trials(tmp_path, name)
    lost = trials[victim.number]
    assert lost.state == TrialState.FAIL, out
    retried = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert retried and retried[0].params == lost.params, out  # its params were queued again
    assert retried[0].state == TrialState.COMPLETE and retried[0].user_attrs["node"] == head.node_id()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert TrialState.RUNNING not in [t.state for t in trials]
