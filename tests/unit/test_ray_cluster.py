"""The cluster module without a cluster: which cluster a run uses, the address probe, the resource and
token checks, and the watcher that ends what a dead driver left (real processes, no Ray)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from search._ray.cluster import (
    TOKEN_HELP,
    Target,
    check_address,
    choose_target,
    host_port,
    join_problem,
    local_gpu_problem,
    node_problem,
    probe,
)
from search._ray.reaper import descendants, orphans, process_table
from trainer import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "address, env, expected",
    [
        (None, {}, Target(None, "")),
        (None, {"RAY_ADDRESS": "10.0.0.1:6379"}, Target("10.0.0.1:6379", "RAY_ADDRESS")),
        (None, {"RAY_ADDRESS": "  "}, Target(None, "")),
        ("10.0.0.2:6379", {"RAY_ADDRESS": "10.0.0.1:6379"}, Target("10.0.0.2:6379", "--address")),
        ("auto", {"RAY_ADDRESS": "10.0.0.1:6379"}, Target("10.0.0.1:6379", "RAY_ADDRESS")),
        ("auto", {}, Target("auto", "--address")),
        ("local", {"RAY_ADDRESS": "10.0.0.1:6379"}, Target(None, "")),
    ],
)
def test_the_cluster_a_run_uses(address: str | None, env: dict, expected: Target) -> None:
    assert choose_target(address, env) == expected


@pytest.mark.parametrize(
    "address, expected",
    [
        ("10.0.0.1:6379", ("10.0.0.1", 6379)),
        ("head.example:1234", ("head.example", 1234)),
        ("[::1]:6379", ("::1", 6379)),
        ("10.0.0.1", None),
        (":6379", None),
        ("h:0", None),
        ("h:70000", None),
        ("h:port", None),
    ],
)
def test_host_port(address: str, expected: tuple | None) -> None:
    assert host_port(address) == expected


def _server(reply: bytes | None) -> tuple[int, threading.Thread]:
    """A one-connection TCP server that sends `reply` once it has read the client's first bytes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)

    def serve() -> None:
        conn, _ = sock.accept()
        with conn:
            conn.recv(64)
            if reply is not None:
                conn.sendall(reply)
        sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return sock.getsockname()[1], thread


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_probe_accepts_an_http2_server_only() -> None:
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame: what a gRPC server sends
    port, thread = _server(settings)
    assert probe("127.0.0.1", port) is None
    thread.join(5)
    port, thread = _server(b"HTTP/1.0 400 Bad Request\r\n\r\n")
    assert "does not answer as a Ray cluster" in (probe("127.0.0.1", port) or "")
    thread.join(5)
    assert "refused" in (probe("127.0.0.1", _closed_port()) or "").lower()


@pytest.mark.parametrize(
    "source, advice",
    [("--address", "leave out --address"), ("RAY_ADDRESS", "unset RAY_ADDRESS (or pass --address local)")],
)
def test_an_address_nobody_answers_names_it_and_the_way_out(source: str, advice: str) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    started = time.time()
    with pytest.raises(ConfigError) as caught:
        check_address(Target(address, source))
    text = str(caught.value)
    assert text.startswith(f"error: {source}: no Ray cluster answers at {address}")
    assert advice in text
    assert time.time() - started < 10  # a refused connection is answered at once, not after Ray's retries


@pytest.mark.parametrize("address, found", [("head", "expected HOST:PORT"), ("ray://head:10001", "Ray Client")])
def test_an_address_of_the_wrong_form(address: str, found: str) -> None:
    with pytest.raises(ConfigError, match=found):
        check_address(Target(address, "--address"))


class AuthenticationError(Exception):
    """Stands in for ray.exceptions.AuthenticationError: join_problem matches the class name."""


@pytest.mark.parametrize(
    "exc, env, says",
    [
        (
            ConnectionError("Failed to connect to Ray cluster at h:1"),
            {},
            "uses token authentication, which this driver has not turned on",
        ),
        (
            AuthenticationError("RAY_AUTH_TOKEN_PATH is set but file cannot be opened or is empty: /x"),
            {"RAY_AUTH_MODE": "token"},
            "uses token authentication, and this driver has no token",
        ),
        (ConnectionError("Failed to connect"), {"RAY_AUTH_MODE": "token"}, "refused this driver's token"),
    ],
)
def test_token_problems_say_how_to_provide_the_token(exc: Exception, env: dict, says: str) -> None:
    if isinstance(exc, ConnectionError):
        exc.__cause__ = RuntimeError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect")
    problem = join_problem(Target("h:1", "--address"), exc, env)
    assert says in problem.message
    assert problem.message.endswith(TOKEN_HELP)
    for way in ("RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN=", "RAY_AUTH_TOKEN_PATH=", "~/.ray/auth_token"):
        assert way in problem.message


def test_a_driver_on_a_machine_that_is_not_a_node() -> None:
    exc = RuntimeError("No node info found matching attributes: '192.0.2.7' when trying to resolve node to connect to.")
    message = join_problem(Target("10.0.0.1:6379", "--address"), exc, {}).message
    assert message.startswith("this machine is not a node of the Ray cluster at 10.0.0.1:6379")
    assert "`ray start --address=10.0.0.1:6379`" in message


def test_auto_without_a_cluster() -> None:
    exc = ConnectionError("Could not find any running Ray instance. Please specify the one to connect to")
    assert "no running Ray cluster found" in join_problem(Target("auto", "--address"), exc, {}).message


def _node(cpu: float, gpu: float = 0, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpu, **({"GPU": gpu} if gpu else {})}}


def test_a_trial_that_fits_on_one_node() -> None:
    nodes = [_node(2), _node(8, 1)]
    assert node_problem({"cpu": 8, "gpu": 1}, nodes, "the cluster", "s.yaml") is None
    assert node_problem({"cpu": 2, "gpu": 0}, nodes, "the cluster", "s.yaml") is None


def test_a_trial_no_node_can_hold_names_the_largest_node() -> None:
    nodes = [_node(4), _node(2, 1), _node(64, 8, alive=False)]
    gpu = node_problem({"cpu": 1, "gpu": 2}, nodes, "the cluster at h:1", "s.yaml")
    assert gpu is not None and gpu.key == "resources.gpu"
    assert "each trial asks for 1 CPU and 2 GPU, but no node of the cluster at h:1 offers that" in gpu.message
    assert "the largest has 2 CPU and 1 GPU (2 node(s) alive)" in gpu.message
    cpu = node_problem({"cpu": 6, "gpu": 0}, nodes, "the cluster at h:1", "s.yaml")
    assert cpu is not None and cpu.key == "resources.cpu" and "asks for 6 CPU," in cpu.message
    both = node_problem({"cpu": 4, "gpu": 1}, nodes, "the cluster", "s.yaml")  # each fits somewhere, not together
    assert both is not None and both.key == "resources.cpu"


def test_more_gpus_than_this_machine_has() -> None:
    assert local_gpu_problem(0.5, 1, "s.yaml") is None
    problem = local_gpu_problem(1, 0, "s.yaml")
    assert problem is not None and problem.key == "resources.gpu"
    assert "asks for 1 GPU, but this machine has 0 GPU(s)" in problem.message


# ---- the watcher (search._ray.reaper), on real processes -----------------------------------------

DRIVER = textwrap.dedent("""
    import subprocess, sys, time
    from search._ray.reaper import start_reaper, stop_reaper
    reaper = start_reaper()
    time.sleep(0.3)
    # a child that detaches (as Ray's agents end up when the raylet dies) and one that stays a child
    orphan = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(300)"])
    kept = subprocess.Popen(["sleep", "300"])
    print(reaper.pid, orphan.pid, kept.pid, flush=True)
    if sys.argv[1] == "stop":
        time.sleep(1.5)  # the watcher notes both
        stop_reaper(reaper)
        print("stopped", flush=True)
    time.sleep(300)
""")


def _alive(pid: int) -> bool:
    return pid in process_table()


def _wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the watcher reads /proc (Linux)")
def test_a_sigkilled_driver_takes_its_processes_with_it(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "kill"], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    reaper, orphan, kept = map(int, driver.stdout.readline().split())
    time.sleep(1.5)  # the watcher notes the children (every 0.5 s)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    left = _wait_gone([orphan, kept, reaper])
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the watcher reads /proc (Linux)")
def test_stopping_the_watcher_spares_what_the_driver_still_holds(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "stop"], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        reaper, orphan, kept = map(int, driver.stdout.readline().split())
        assert driver.stdout.readline().strip() == "stopped"
        assert _wait_gone([reaper]) == []
        assert _alive(kept) and _alive(orphan)  # both still the driver's children: not the watcher's to end
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        for pid in (orphan, kept):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        driver.wait()


def test_orphans_are_what_the_driver_no_longer_holds() -> None:
    # pid -> (parent, start time): the driver 10 holds 11 (and 12 below it); 13 was reparented to init
    table = {1: (0, 1), 10: (1, 100), 11: (10, 101), 12: (11, 102), 13: (1, 103), 14: (1, 999)}
    assert descendants(10, table) == {11: 101, 12: 102}
    known = {11: 101, 12: 102, 13: 103, 14: 104, 15: 105}  # 14's pid was reused (other start), 15 ended
    assert sorted(orphans((10, 100), known, table)) == [13]
    dead = {k: v for k, v in table.items() if k != 10}
    assert sorted(orphans((10, 100), known, dead)) == [11, 12, 13]


def test_trial_workers_wait_long_enough_to_reuse_an_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tune's default (2 s) for a stopped trial's thread to end is shorter than a job's clean-up on a busy
    # machine; an actor that could not be reused left a run waiting for ever.
    from search._ray.cluster import REUSE_WAIT_S, _quiet_ray_defaults, worker_env

    monkeypatch.delenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", raising=False)
    assert worker_env() == {"TUNE_FUNCTION_THREAD_TIMEOUT_S": str(REUSE_WAIT_S)} and REUSE_WAIT_S >= 30
    _quiet_ray_defaults(SimpleNamespace(budget=SimpleNamespace(concurrency=2)))  # before ray.init: workers inherit
    assert os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] == str(REUSE_WAIT_S)


def test_cluster_gone_names_the_vital_process_that_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local cluster's vital processes (raylet, GCS) are noted once, children of the driver; the first
    one that ends (or is a zombie) makes the cluster dead, by name; nothing noted (a joined cluster): alive."""
    from search._ray import cluster

    monkeypatch.setattr(cluster, "_VITALS", {})
    assert cluster.cluster_gone() is None
    monkeypatch.setattr(cluster, "VITAL", ("sleep",))
    child = subprocess.Popen(["sleep", "60"])
    try:
        cluster.note_vitals()
        assert list(cluster._VITALS) == [child.pid]
        assert cluster.cluster_gone() is None
        child.kill()  # not reaped yet: a zombie is dead too
        deadline = time.time() + 10
        while cluster.cluster_gone() is None and time.time() < deadline:
            time.sleep(0.05)
        assert cluster.cluster_gone() == "its sleep ended"
    finally:
        child.kill()
        child.wait()
    assert cluster.cluster_gone() == "its sleep ended"
