"""Multi-process start-up: find the cluster from flags or the launcher's environment, meet at the
coordinator, initialize `jax.distributed`; and the few collective helpers the loop needs.

JAX aborts the whole process (a C++ fatal error with a stack dump) when the coordinator cannot be
reached in time, so an explicit cluster first meets at the coordinator's port over plain TCP:
a process that cannot reach it, or a coordinator that does not see every process, fails with one
line naming the address, the counts and the fix, before JAX starts. The meeting also opens the
liveness links of `watchdog.py`, which stop the run in one line when a process is lost mid-run.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from typing import Mapping

import jax
import numpy as np

from gpt2_jax.parallel import watchdog

ENV_PREFIX = "GPT2_JAX_"  # GPT2_JAX_COORDINATOR, GPT2_JAX_NUM_PROCESSES, GPT2_JAX_PROCESS_ID


class DistributedError(RuntimeError):
    """The processes of a run could not start together; the message says which and how to fix it."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How this process joins a run: alone, with explicit coordinates, or by JAX's auto-detection."""

    mode: str = "single"  # single | explicit | auto
    coordinator: str | None = None
    num_processes: int = 1
    process_id: int = 0
    local_device_ids: tuple[int, ...] | None = None
    timeout_s: int = 300
    source: str = ""  # where the settings came from, for the log line
    heartbeat_s: int = 30  # a process silent this long is given up (watchdog.py; JAX's own check is later)


def detect(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
           local_device_ids: str | None = None, timeout_s: int = 300,
           env: Mapping[str, str] | None = None, heartbeat_s: int = 30) -> ClusterSpec:
    """The ClusterSpec from explicit flags, else GPT2_JAX_* variables, else SLURM / TPU-pod detection."""
    return dataclasses.replace(_detect(coordinator, num_processes, process_id, local_device_ids, timeout_s, env),
                               heartbeat_s=heartbeat_s)


def _detect(coordinator, num_processes, process_id, local_device_ids, timeout_s, env) -> ClusterSpec:
    env = dict(env or {})
    ids = tuple(int(i) for i in local_device_ids.split(",")) if local_device_ids else None
    source = "flags"
    if coordinator is None and env.get(ENV_PREFIX + "COORDINATOR"):
        coordinator, source = env[ENV_PREFIX + "COORDINATOR"], f"{ENV_PREFIX}* environment"
        num_processes = num_processes or _int_env(env, ENV_PREFIX + "NUM_PROCESSES")
        process_id = process_id if process_id is not None else _int_env(env, ENV_PREFIX + "PROCESS_ID")
    if coordinator is not None:
        if num_processes is None or process_id is None:
            raise DistributedError(f"coordinator {coordinator} given ({source}) without the number of processes "
                                   "and this process's id; pass --num-processes N --process-id I as well")
        if ":" not in coordinator:
            raise DistributedError(f"coordinator {coordinator!r} needs a port: HOST:PORT, e.g. 10.0.0.1:12355")
        if not 0 <= process_id < num_processes:
            raise DistributedError(f"process id {process_id} is outside 0..{num_processes - 1} "
                                   f"(--num-processes {num_processes}); number processes from 0")
        return ClusterSpec("explicit", coordinator, num_processes, process_id, ids, timeout_s, source)
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return ClusterSpec("auto", num_processes=int(env["SLURM_NTASKS"]), process_id=int(env.get("SLURM_PROCID", 0)),
                           local_device_ids=ids, timeout_s=timeout_s, source=f"SLURM job {env['SLURM_JOB_ID']}")
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return ClusterSpec("auto", num_processes=len(hosts.split(",")) if hosts else 0,
                           process_id=int(env.get("TPU_WORKER_ID", 0) or 0), timeout_s=timeout_s, source="TPU VM pod")
    return ClusterSpec(local_device_ids=ids)


def _int_env(env: Mapping[str, str], key: str) -> int | None:
    value = env.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{key}={value!r} is not an integer") from None


def initialize(spec: ClusterSpec) -> None:
    """Join the run described by spec (no-op when alone); must run before any JAX computation."""
    if spec.mode == "single":
        return
    # JAX's own check gives up later than the watchdog, which names the lost process in one line.
    jax_heartbeat = max(100, spec.heartbeat_s + 30)
    if spec.mode == "explicit":
        links = rendezvous(spec.coordinator, spec.num_processes, spec.process_id, spec.timeout_s)
        jax.distributed.initialize(spec.coordinator, spec.num_processes, spec.process_id,
                                   local_device_ids=spec.local_device_ids,
                                   initialization_timeout=spec.timeout_s, heartbeat_timeout_seconds=jax_heartbeat)
        watchdog.start(links, spec.process_id, spec.num_processes, spec.heartbeat_s)
    else:  # SLURM / TPU pods: no rendezvous of ours, so JAX's heartbeat check alone
        jax.distributed.initialize(local_device_ids=spec.local_device_ids, initialization_timeout=spec.timeout_s,
                                   heartbeat_timeout_seconds=spec.heartbeat_s)


def rendezvous(coordinator: str, num_processes: int, process_id: int,
               timeout_s: float) -> dict[int, socket.socket]:
    """Meet every process at coordinator's port over TCP, or raise DistributedError within timeout_s;
    returns this process's liveness links ({peer process id: socket}) for `watchdog.start`.

    Process 0 listens and answers once all others have connected, with the port of a second
    listener where each of them then opens its liveness link; the others close the first
    connection first, so the port is free (no server-side TIME_WAIT) when JAX's coordination
    service binds it.
    """
    host, port = coordinator.rsplit(":", 1)
    port = int(port)
    deadline = time.monotonic() + timeout_s
    fix = (f"start all {num_processes} processes with the same --coordinator (process 0's reachable HOST:PORT) "
           f"within --coordinator-timeout={timeout_s:g} s, and check the port is open")
    if process_id == 0:
        return _serve(port, num_processes, deadline, coordinator, fix)
    return _join(host, port, process_id, num_processes, deadline, coordinator, fix)


def _serve(port: int, num_processes: int, deadline: float, coordinator: str, fix: str) -> dict[int, socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        server.bind(("", port))
    except OSError as e:
        server.close()
        raise DistributedError(f"process 0 cannot listen on coordinator port {port} ({e.strerror}); "
                               "choose a free port for --coordinator") from None
    server.listen(num_processes)
    peers: dict[int, socket.socket] = {}
    try:
        while len(peers) < num_processes - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(1, num_processes)) - set(peers))
                raise DistributedError(f"only {len(peers) + 1} of {num_processes} processes reached the coordinator "
                                       f"{coordinator} (missing process ids {missing}); {fix}")
            server.settimeout(min(left, 1.0))
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            conn.settimeout(max(deadline - time.monotonic(), 1.0))
            peers[int(conn.recv(16).decode().strip() or -1)] = conn
        links = _accept_links(peers, deadline)
        for conn in peers.values():  # wait for each peer to close first
            try:
                conn.recv(16)
            except OSError:
                pass
        return links
    finally:
        for conn in peers.values():
            conn.close()
        server.close()


def _accept_links(peers: dict[int, socket.socket], deadline: float) -> dict[int, socket.socket]:
    """Tell every peer 'go <port>' and accept its liveness link on that port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("", 0))
    listener.listen(len(peers))
    links: dict[int, socket.socket] = {}
    try:
        for conn in peers.values():
            conn.sendall(f"go {listener.getsockname()[1]}\n".encode())
        listener.settimeout(max(deadline - time.monotonic(), 5.0))
        while len(links) < len(peers):
            link, _ = listener.accept()
            link.settimeout(max(deadline - time.monotonic(), 5.0))
            links[int(link.recv(16).decode().strip() or -1)] = link
    except OSError as e:
        for link in links.values():
            link.close()
        raise DistributedError(f"{len(links)} of {len(peers)} processes opened their liveness link to process 0 "
                               f"({e}); check that process 0's host accepts connections on any port") from None
    finally:
        listener.close()
    return links


def _join(host: str, port: int, process_id: int, num_processes: int, deadline: float, coordinator: str,
          fix: str) -> dict[int, socket.socket]:
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(min(deadline - time.monotonic(), 5.0), 0.1)) as s:
                s.sendall(f"{process_id}\n".encode())
                s.settimeout(max(deadline - time.monotonic(), 0.1))
                answer = s.recv(32)
                while answer.startswith(b"go") and not answer.endswith(b"\n"):
                    answer += s.recv(32) or b"\n"
                if answer.startswith(b"go"):
                    link = socket.create_connection((host, int(answer.split()[1])), timeout=5.0)
                    link.sendall(f"{process_id}\n".encode())
                    return {0: link}
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise DistributedError(f"process {process_id} of {num_processes} could not reach the coordinator "
                                   f"{coordinator} (or not every process arrived); {fix}")
        time.sleep(0.2)


def leave() -> None:
    """A clean exit of this process: the others' watchdogs must not take it for a loss."""
    watchdog.leave()


def is_primary() -> bool:
    """Whether this process writes logs, metrics, plots and results (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process reaches this point (no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True on every process if flag is True on any (a collective; cheap, but it waits for the others)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def to_host(tree):
    """A pytree of global arrays as numpy on every process (gathers shards held by other processes)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
