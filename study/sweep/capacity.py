"""Can this Ray ever run one trial of the sweep, and how many at once?

    python -m study.sweep smoke --gpus-per-trial 1     # on a machine without a GPU: refused in one line

Ray queues a trial whose resources no node has and waits for ever (or for an autoscaler to add a
node). Before any trial starts, `check_capacity` compares one trial's CPUs and GPUs with each live
node's: when no node can hold it, the sweep is refused in one line naming the flag, unless the
cluster has an autoscaler (then a warning: a bigger node may still come). `check_address` refuses
an address nothing answers on within seconds, where `ray.init` would retry for minutes.
"""

from __future__ import annotations

import errno
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import ray

from study.errors import UsageError

CONNECT_TIMEOUT_S = 5.0
# Written on the head node by `ray up`: a cluster started from it may add nodes.
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")


@dataclass(frozen=True)
class Node:
    cpus: float
    gpus: float
    memory: float = 0.0  # bytes for its trials (0: unknown)


def live_nodes() -> list[Node]:
    """The CPUs, GPUs and memory of each node of the connected Ray that is alive. Ray splits a
    node's memory into its object store and the rest ("memory", for tasks): a trial has both."""
    return [
        Node(
            node["Resources"].get("CPU", 0.0),
            node["Resources"].get("GPU", 0.0),
            node["Resources"].get("memory", 0.0) + node["Resources"].get("object_store_memory", 0.0),
        )
        for node in ray.nodes()
        if node.get("Alive")
    ]


def trials_at_once(cpus_per_trial: float, gpus_per_trial: float, nodes: list[Node] | None) -> int | None:
    """Trials that fit side by side on `nodes` (each node packed on its own); None when unknown."""
    if not nodes:
        return None
    total = 0
    for node in nodes:
        fits = node.cpus // cpus_per_trial
        if gpus_per_trial:
            fits = min(fits, node.gpus // gpus_per_trial)
        total += int(fits)
    return total


def autoscaling() -> bool:
    """Whether the connected cluster may add nodes: Ray's autoscaler v2 flag in the GCS, or the
    config `ray up` leaves on the head (where `ray job submit` runs the sweep)."""
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2(fetch_from_server=True):
            return True
    except Exception:  # an older or stripped-down Ray: fall back to the file
        pass
    return BOOTSTRAP_CONFIG.expanduser().exists()


def check_capacity(cpus_per_trial: float, gpus_per_trial: float, nodes: list[Node], can_grow: bool) -> str | None:
    """Refuse (UsageError) a sweep no node can ever run; a warning line instead when the cluster
    may grow; None when some node holds a trial."""
    if trials_at_once(cpus_per_trial, gpus_per_trial, nodes):
        return None
    largest_cpus = max((node.cpus for node in nodes), default=0.0)
    largest_gpus = max((node.gpus for node in nodes), default=0.0)
    if gpus_per_trial > largest_gpus:
        flag, value, most = "--gpus-per-trial", gpus_per_trial, largest_gpus
    else:
        flag, value, most = "--cpus-per-trial", cpus_per_trial, largest_cpus
    where = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}, the largest with {largest_cpus:g} CPUs and {largest_gpus:g} GPUs"
    line = f"{flag} {value:g}: no node of this Ray can hold one trial ({where}); allowed: at most {most:g}"
    if can_grow:
        return f"WARNING: {line}; the cluster's autoscaler may add a node that can, so the trials wait for it"
    raise UsageError(line)


JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in the environment of a `ray job submit` driver


def check_shared_storage(storage_given: bool, nodes: list[Node]) -> None:
    """A sweep on more than one node, or run as a Ray job, must name its --storage: the default
    `results/` would be a folder on the head alone (for a job, inside Ray's temporary copy of the
    working dir, gone with it), where the other nodes' trials cannot write and no one looks."""
    if storage_given:
        return
    where = f"a cluster of {len(nodes)} nodes" if len(nodes) > 1 else "a Ray job" if os.environ.get(JOB_ENV) else None
    if where:
        raise UsageError(
            f"--storage: a sweep on {where} needs one that every node and you can reach, e.g. --storage /mnt/shared/results "
            "or s3://bucket/results; the default results/ would be a folder on the head alone"
        )


def check_resource_flag(flag: str, value: float | None, positive: bool) -> None:
    """A per-trial resource is a finite number, > 0 (CPUs) or >= 0 (GPUs)."""
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise UsageError(f"{flag} {value}: must be a finite number {'above' if positive else 'at least'} 0")


def check_address(address: str | None) -> None:
    """Fail within seconds, in one line, when nothing listens at `address`: a host:port, a Ray
    Client address (ray://host:port), or 'auto' (the Ray that `ray start` last started here, else
    any running on this machine, as Ray resolves it), where `ray.init` would retry for a minute."""
    if not address or address == "local":
        return
    given = f"--address {address}"
    if address == "auto":
        found = running_ray()
        if found is None:
            raise UsageError(
                f"{given}: no Ray is running on this machine; start one with `ray start --head`, "
                "or leave --address out for a private local Ray"
            )
        given, address = f"{given} (found {found})", found
    host, _, port = address.rpartition("://")[2].partition("/")[0].rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(
            f"{given}: expected host:port of the Ray head's GCS (e.g. 10.0.0.5:6379), "
            "ray://host:port of its Ray Client server, 'auto' or 'local'"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as probe:
            if probe.getsockname() == probe.getpeername():  # TCP connected a free local port to itself
                raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    except OSError as error:
        raise UsageError(
            f"{given}: no Ray answers there ({error.strerror or error}) within {CONNECT_TIMEOUT_S:g} s; "
            "start one with `ray start --head`, or leave --address out for a local Ray"
        ) from None


def running_ray() -> str | None:
    """The address `ray.init(address="auto")` would join ($RAY_ADDRESS, the one `ray start` wrote in
    Ray's temp folder, else any GCS running here); None when there is none."""
    from ray._private.services import get_ray_address_from_environment  # Ray 2.60's own resolution

    try:
        return get_ray_address_from_environment("auto", None)
    except ConnectionError:
        return None
