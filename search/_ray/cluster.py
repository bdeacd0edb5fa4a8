"""Where a study's trials run: a local Ray cluster this driver starts, or a running one it joins, checked first.

`ray_cluster(cfg, address=..., say=..., warm=...)` is the one entry point: it chooses the target
(`--address`, else `RAY_ADDRESS`, else a local cluster), checks that a cluster answers there and
accepts this driver (Ray's token authentication), checks that some node can hold one trial, and
yields the resources each trial asks Ray for. Every problem is a `ConfigError` (exit 2) raised
before any trial. A local cluster is ended with the driver, even a SIGKILLed one (`reaper`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search._ray._internals import drop_tune_default_env_var, few_join_tries, init_with_preload
from search._ray.interrupts import interrupts_held
from search._ray.reaper import start_reaper, stop_reaper
from search._ray.resources import joined_request, local_cluster_cpus, local_request
from search.config import StudyConfig
from trainer import ConfigError, Problem

PROBE_TIMEOUT_S = 3.0
PRELOAD_MODULE = "search._ray.preload"
"""Imported by every worker of a local cluster this driver starts, before it takes work (by this path)."""
JOIN_TRIES = 5
"""Tries to join, a second apart (Ray's default, 20, makes a missing or wrong token cost 20 s)."""

_WATCHING_TILL_EXIT: list[Any] = []
"""Watchers whose pipe must stay open until this process exits (kept referenced: a collected Popen closes it)."""

TOKEN_HELP = (
    "set RAY_AUTH_MODE=token and give this driver the cluster's token, as Ray documents it: "
    "RAY_AUTH_TOKEN=<token>, or RAY_AUTH_TOKEN_PATH=<file holding it>, or the file ~/.ray/auth_token "
    "(`ray get-auth-token` on the head node prints it)"
)


@dataclass(frozen=True)
class Target:
    """The cluster a run uses: `address` None means a local cluster this driver starts."""

    address: str | None
    source: str
    """Where the address came from: "--address", "RAY_ADDRESS", or "" for a local cluster."""


def choose_target(address: str | None, environ: Mapping[str, str]) -> Target:
    """`--address` wins; `auto` means RAY_ADDRESS when it is set (as in Ray); `local` starts a local cluster."""
    env = (environ.get("RAY_ADDRESS") or "").strip()
    if address in (None, ""):
        return Target(env, "RAY_ADDRESS") if env else Target(None, "")
    if address == "local":
        return Target(None, "")
    if address == "auto" and env:
        return Target(env, "RAY_ADDRESS")
    return Target(address, "--address")


def host_port(address: str) -> tuple[str, int] | None:
    """`host:port` (IPv6 in brackets) as a pair, or None when `address` is not of that form."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def probe(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why no Ray cluster answers at host:port, or None when a gRPC server (Ray's GCS is one) does.

    Opens a TCP connection and starts an HTTP/2 session (the connection preface and an empty
    SETTINGS frame, RFC 9113 3.4): a gRPC server's first frame back is SETTINGS. Nothing of Ray is
    used, so an address that does not answer costs `timeout` seconds, not Ray's minutes of retries.
    """
    try:
        conn = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    with conn:
        try:
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            head = b""
            while len(head) < 9:
                chunk = conn.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
        except OSError as exc:
            return f"it does not answer as a Ray cluster ({exc.strerror or exc})"
    if len(head) == 9 and head[3] == 0x4:
        return None
    return "something listens there, but it does not answer as a Ray cluster (no gRPC)"


def check_address(target: Target) -> None:
    """Raise ConfigError unless a Ray cluster answers at the target's host:port (`auto` is left to Ray)."""
    address = target.address or ""
    if address == "auto":
        return
    local = "unset RAY_ADDRESS (or pass --address local)" if target.source == "RAY_ADDRESS" else "leave out --address"
    if "://" in address:
        raise ConfigError(
            Problem(
                target.source,
                "",
                (
                    f"expected the cluster's address HOST:PORT (what `ray start --head` printed), found {address!r}: "
                    "a Ray Client address (ray://) is not supported; run sftune where it reaches the cluster's nodes"
                ),
            )
        )
    parsed = host_port(address)
    if parsed is None:
        raise ConfigError(
            Problem(
                target.source,
                "",
                (f"expected HOST:PORT (what `ray start --head` printed), auto or local, found {address!r}"),
            )
        )
    why = probe(*parsed)
    if why is not None:
        raise ConfigError(
            Problem(
                target.source,
                "",
                (
                    f"no Ray cluster answers at {address} ({why}); start one there with `ray start --head "
                    f"--port={parsed[1]}`, or {local} to run on a local cluster"
                ),
            )
        )


def runs_a_raylet() -> bool | None:
    """Whether a Ray node (a raylet) runs on this machine; None where /proc cannot tell (not Linux)."""
    proc = Path("/proc")
    if not (proc / "self" / "cmdline").exists():
        return None
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().split(b"\0", 1)[0].endswith(b"/raylet"):
                    return True
            except OSError:
                continue
    return False


NOT_A_NODE = (
    "this machine is not a node of the Ray cluster at {address}, and a Ray driver runs on one of its "
    "nodes: run sftune on the head node (or another node), or first join this machine with "
    "`ray start --address={address}`"
)


def join_problem(target: Target, exc: BaseException, environ: Mapping[str, str]) -> Problem:
    """What to tell the user when `ray.init(address=...)` failed on a cluster that answered."""
    text = f"{exc} {exc.__cause__ or ''}"
    mode = (environ.get("RAY_AUTH_MODE") or "").lower()
    if "Could not find any running Ray instance" in text:
        return Problem(
            target.source,
            "",
            (
                "auto: no running Ray cluster found on this machine; start one with `ray start --head`, "
                "pass its HOST:PORT, or leave out --address to run on a local cluster"
            ),
        )
    if "No node info found matching" in text:
        return Problem(target.source, "", NOT_A_NODE.format(address=target.address))
    if type(exc).__name__ == "AuthenticationError" or "InvalidAuthToken" in text or "Unauthenticated" in text:
        if mode != "token":
            what = "uses token authentication, which this driver has not turned on"
        elif "no authentication token was found" in text or "cannot be opened" in text:
            what = f"uses token authentication, and this driver has no token ({getattr(exc, 'message', exc)})"
        else:
            what = "refused this driver's token (it is not the cluster's)"
        return Problem(target.source, "", f"the Ray cluster at {target.address} {what}: {TOKEN_HELP}")
    return Problem(target.source, "", f"could not join the Ray cluster at {target.address}: {exc}")


def node_problem(
    per_trial: Mapping[str, float], nodes: list[dict[str, Any]], where: str, source: str
) -> Problem | None:
    """A Problem when no alive node has the CPUs and GPUs one trial asks for (`nodes` as `ray.nodes()`)."""
    cpu, gpu = float(per_trial.get("cpu", 0)), float(per_trial.get("gpu", 0))
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpu and r.get("GPU", 0) >= gpu for r in alive):
        return None
    largest: dict[str, Any] = max(alive, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    key = "resources.gpu" if all(r.get("GPU", 0) < gpu for r in alive) else "resources.cpu"
    asked = f"{cpu:g} CPU" + (f" and {gpu:g} GPU" if gpu else "")
    return Problem(
        source,
        key,
        (
            f"each trial asks for {asked}, but no node of {where} offers that: the largest has "
            f"{largest.get('CPU', 0):g} CPU and {largest.get('GPU', 0):g} GPU ({len(alive)} node(s) alive); "
            "lower resources, or add a node that has them"
        ),
    )


def local_gpu_problem(gpu: float, gpus_here: float, source: str) -> Problem | None:
    """A Problem when one trial asks for more GPUs than this machine's Ray sees."""
    if gpu <= gpus_here:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    return Problem(
        source,
        "resources.gpu",
        (
            f"each trial asks for {gpu:g} GPU, but this machine has {gpus_here:g} GPU(s) that Ray can use{seen}; "
            "lower resources.gpu, or join a cluster that has GPUs with --address"
        ),
    )


@contextmanager
def _stderr_kept_aside() -> Iterator[Callable[[], str]]:
    """Hold this process's file descriptor 2 in a file (Ray's C++ client prints its retries there)."""
    with tempfile.TemporaryFile(mode="w+b") as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield lambda: (held.seek(0), held.read().decode(errors="replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _join(target: Target) -> None:
    import ray

    check_address(target)
    if target.address != "auto" and runs_a_raylet() is False:  # Ray would look for one for a minute
        raise ConfigError(Problem(target.source, "", NOT_A_NODE.format(address=target.address)))
    # Ray keeps trying a GCS that refuses the driver for about 20 s; a few tries decide it.
    with few_join_tries(JOIN_TRIES), _stderr_kept_aside() as printed:
        try:
            ray.init(
                address=target.address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                runtime_env={"env_vars": worker_env()},
            )
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
            problem = join_problem(target, exc, os.environ)
            if problem.message.startswith("could not join"):  # not one we know: show what Ray said
                said = list(dict.fromkeys(line.split("] ", 1)[-1] for line in printed().splitlines()))
                problem = Problem(problem.source, problem.key, "\n  ".join([problem.message, *said[-5:]]))
            raise ConfigError(problem) from None


def warm_workers(warm: Mapping[str, Any]) -> list[str]:
    """Have a local cluster's idle workers import the training stack; returns the modules each worker preloads.

    Every worker Ray starts imports `search._ray.preload` before it takes work (`init_with_preload`),
    told the model and task by `SFTUNE_WARM`; the workers start while the driver tokenizes and opens
    the study. Tune's trial actors must carry no runtime_env of their own, or Ray starts a fresh, cold
    worker for each: PL_DISABLE_FORK, the one variable Tune gives them, is set in this process instead
    (the workers inherit it) and removed from Tune's defaults (`drop_tune_default_env_var`). Variables
    Tune passes on from this environment, such as AWS credentials, still go through a runtime_env. Both
    reaches are Ray internals, in `search._ray._internals`.
    """
    os.environ["SFTUNE_WARM"] = json.dumps(dict(warm))
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    drop_tune_default_env_var("PL_DISABLE_FORK")
    return [PRELOAD_MODULE]


class Cluster:
    """One run's Ray cluster: `start()` joins or starts it and checks it, `stop()` ends what it started."""

    def __init__(
        self,
        cfg: StudyConfig,
        *,
        address: str | None,
        say: Callable[[str], None],
        warm: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.say = say
        self.warm = dict(warm or {})
        self.target = choose_target(address, os.environ if environ is None else environ)
        self.started_ray = False
        self._reaper: Any = None

    def start(self) -> dict[str, float]:
        """Join or start the cluster and check it; returns the Ray resources each trial asks for."""
        _quiet_ray_defaults(self.cfg)
        import ray

        if ray.is_initialized():  # a cluster this process already joined (the tests' in-process runs)
            return joined_request(self.cfg)
        began = time.time()
        joining = self.target.address is not None
        try:
            with interrupts_held():  # a Ctrl-C now is raised once Ray has started (`interrupts`)
                per_trial, problem, what = self._join() if joining else self._start_local()
        except KeyboardInterrupt:
            self.stop()
            raise
        if problem is not None:
            self.stop()
            raise ConfigError(problem)
        resources = ray.cluster_resources()
        self.say(
            f"ray: {what} in {time.time() - began:.1f}s ("
            + (
                f"{len([n for n in ray.nodes() if n.get('Alive')])} node(s), {resources.get('CPU', 0):g} CPUs, "
                if joining
                else f"{self.cfg.budget.concurrency} trial slots, "
            )
            + f"{resources.get('GPU', 0):g} GPUs)"
        )
        return per_trial

    def _join(self) -> tuple[dict[str, float], Problem | None, str]:
        import ray

        _join(self.target)
        self.started_ray = True
        per_trial = joined_request(self.cfg)
        problem = node_problem(per_trial, ray.nodes(), f"the cluster at {self.target.address}", str(self.cfg.path))
        problem = problem or self._ranks_problem(per_trial, f"the cluster at {self.target.address}")
        origin = (
            ""
            if self.target.source == "--address"
            else (" (from RAY_ADDRESS; unset it or pass --address local to run on a local cluster)")
        )
        return per_trial, problem, f"joined the cluster at {self.target.address}{origin}"

    def _start_local(self) -> tuple[dict[str, float], Problem | None, str]:
        import ray

        preload = warm_workers(self.warm) if self.warm else []
        self._reaper = start_reaper()
        try:
            init_with_preload(
                preload,
                address="local",
                num_cpus=local_cluster_cpus(self.cfg),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
        except Exception as exc:  # noqa: BLE001 - e.g. a raylet that did not start in time on a busy machine
            # The watcher stays until this process exits, then ends whatever the failed start left.
            _WATCHING_TILL_EXIT.append(self._reaper)
            self._reaper = None
            os.environ.pop("SFTUNE_WARM", None)
            raise ConfigError(Problem("ray", "", f"could not start a local Ray cluster: {exc}")) from None
        self.started_ray = True
        note_vitals()
        per_trial = local_request(self.cfg)  # one slot per concurrent trial
        problem = local_gpu_problem(self.cfg.resources.gpu, ray.cluster_resources().get("GPU", 0), str(self.cfg.path))
        problem = problem or self._ranks_problem(per_trial, "this machine")
        return per_trial, problem, "started a local cluster"

    def _ranks_problem(self, per_rank: dict[str, float], where: str) -> Problem | None:
        """With `resources.workers` > 1: a Problem when the cluster can never place one trial's ranks at once."""
        if self.cfg.resources.workers <= 1:
            return None
        import ray

        from search._ray.ranks import placement_problem

        return placement_problem(self.cfg.resources.workers, per_rank, ray.nodes(), where, str(self.cfg.path))

    def stop(self) -> None:
        """Leave the cluster; a local one is shut down and whatever Ray left of it is ended."""
        _VITALS.clear()
        if self.started_ray:
            import ray

            ray.shutdown()
            self.started_ray = False
        stop_reaper(self._reaper)
        self._reaper = None
        os.environ.pop("SFTUNE_WARM", None)


VITAL = ("raylet", "gcs_server")
"""The processes of a local cluster without which it is dead (a worker's death fails one trial only)."""

_VITALS: dict[int, tuple[str, int]] = {}
"""The vital processes of the local cluster this process runs now: pid -> (name, start time)."""


def note_vitals() -> None:
    """Note the local cluster's vital processes (children of this driver, found in /proc: Linux only)."""
    from search._ray.reaper import PROC, descendants, process_table

    _VITALS.clear()
    for pid, started in descendants(os.getpid(), process_table()).items():
        try:
            name = (PROC / str(pid) / "comm").read_text().strip()
        except OSError:
            continue
        if name in VITAL:
            _VITALS[pid] = (name, started)


def cluster_gone() -> str | None:
    """Why the local cluster this driver started is dead ("its raylet ended"), or None while it lives (and
    for a joined cluster, whose nodes Ray itself watches)."""
    from search._ray.reaper import PROC

    for pid, (name, started) in list(_VITALS.items()):
        try:
            stat = (PROC / str(pid) / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            alive = fields[0] not in ("Z", "X") and int(fields[19]) == started
        except (OSError, ValueError, IndexError):
            alive = False
        if not alive:
            return f"its {name} ended"
    return None


REUSE_WAIT_S = 60
"""How long a reused trial actor waits for the previous trial's thread to end (Tune's default, 2 s, is shorter
than a job's clean-up on a busy machine; an actor that cannot be reused left the run waiting for ever)."""


def worker_env() -> dict[str, str]:
    """Environment every trial worker needs, whichever node runs it."""
    return {"TUNE_FUNCTION_THREAD_TIMEOUT_S": os.environ.get("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(REUSE_WAIT_S))}


def _quiet_ray_defaults(cfg: StudyConfig) -> None:
    """Ray and Tune settings read from the environment: no callbacks, no usage report, no log dedup;
    a local cluster's workers inherit them (and `worker_env`) from this process."""
    for key, value in worker_env().items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(cfg.budget.concurrency))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report, nothing sent anywhere


@contextmanager
def ray_cluster(
    cfg: StudyConfig, *, address: str | None, say: Callable[[str], None], warm: dict[str, Any] | None = None
) -> Iterator[dict[str, float]]:
    """Join `address` (or RAY_ADDRESS), or start a local cluster; yields the Ray resources per trial.

    A local cluster has one CPU slot per concurrent trial (each trial still runs `resources.cpu`
    threads; `search._ray.resources` says which meaning applies where): Ray starts one idle worker per
    CPU, and with `warm` (model location and task) each imports the training stack as it starts, so
    exactly the workers the trials will use are warm.
    """
    cluster = Cluster(cfg, address=address, say=say, warm=warm)
    per_trial = cluster.start()
    try:
        yield per_trial
    finally:
        cluster.stop()
