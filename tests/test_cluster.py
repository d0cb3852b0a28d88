"""The README's cluster path for real: `ray start --head` and `ray start --address` as separate
processes on this machine (own ports, temp dirs and HOME, so the token Ray writes is theirs), then
`ray job submit --working-dir` of a tiny sweep into storage both nodes reach. The second node is
killed while the sweep runs: its trial goes on from its checkpoint on the head."""

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from helpers import finish

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's ray and python: what every node and the job run
SPACE = """
description: the cluster test
preset: test
fixed: {epochs: 6, max_words: 0}
vary:
  max_grad_norm: {grid: [0.5, 1, 2, 5]}
seeds: [0]
scheduler: {grace_period: 6}
resources: {cpus_per_trial: 1}
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Cluster:
    """A head and a worker node, each a `ray start --block` process of its own."""

    def __init__(self, root: Path, head_resources: tuple[str, ...] = ("--num-cpus", "1"), worker: bool = True):
        self.root = root
        self.temps: list[str] = []
        self.head = self.worker = None
        home = root / "home"
        home.mkdir()
        self.env = {
            **os.environ,
            "HOME": str(home),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            # A dead node is noticed in about a second, not half a minute.
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_timeout_ms": "500",
            "RAY_health_check_failure_threshold": "2",
        }
        # A ray.init() earlier in this process (the session fixture) set RAY_AUTH_MODE=token for its
        # own ~/.ray/auth_token; this cluster has a HOME of its own and decides for itself.
        for inherited in ("RAY_ADDRESS", "RAY_AUTH_MODE"):
            self.env.pop(inherited, None)
        gcs, self.dashboard = free_ports(2)
        self.address = f"127.0.0.1:{gcs}"
        self.head = self._start(
            "head",
            [
                "--head",
                "--port",
                str(gcs),
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(self.dashboard),
                "--include-dashboard",
                "true",
                *head_resources,
            ],
        )
        try:
            self._wait(lambda: self._answers(self.dashboard), "the head's dashboard")
            if worker:
                self.worker = self._start("worker", ["--address", self.address, "--num-cpus", "1"])
            # A busy two-core machine can take over a minute to register a node: ask until it has.
            self._wait(lambda: len(self.nodes()) == (2 if worker else 1), "the nodes", timeout=180)
        except BaseException:
            self.stop()  # a cluster that never came up leaves no process behind
            raise

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        agent, grpc, runtime_env, metrics, manager, objects = free_ports(6)
        ports = [
            "--dashboard-agent-listen-port",
            str(agent),
            "--dashboard-agent-grpc-port",
            str(grpc),
            "--runtime-env-agent-port",
            str(runtime_env),
            "--metrics-export-port",
            str(metrics),
            "--node-manager-port",
            str(manager),
            "--object-manager-port",
            str(objects),
        ]
        # Ray's socket paths must stay under 108 bytes: a short folder of its own under /tmp.
        temp = ["--temp-dir", tempfile.mkdtemp(prefix=f"ray-{name}-", dir="/tmp")]
        self.temps.append(temp[1])
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - the node writes to it for its whole life
        return subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", *args, *ports, *temp],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def _wait(self, ready, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert time.monotonic() < deadline, f"{what} not up; logs in {self.root}"
            for node in (self.head, self.worker):
                assert node is None or node.poll() is None, (
                    f"a node ended while waiting for {what}; logs in {self.root}"
                )
            time.sleep(0.5)

    def nodes(self) -> list[dict]:
        """The live nodes; none while a driver cannot connect yet (Ray's own wait for a local node it
        can attach to is a minute, which a busy machine can outlast: `_wait` asks again)."""
        script = "import json, ray; ray.init(address='auto', logging_level='ERROR'); print(json.dumps(ray.nodes()))"
        try:
            done = subprocess.run(
                [sys.executable, "-c", script],
                env={**self.env, "RAY_ADDRESS": self.address},
                capture_output=True,
                text=True,
                timeout=75,
            )
        except subprocess.TimeoutExpired:
            return []
        return [n for n in json.loads(done.stdout.splitlines()[-1]) if n["Alive"]] if done.returncode == 0 else []

    def submit(self, *args: str) -> subprocess.Popen:
        job = self.root / "job"  # the package without the venv: what --working-dir . ships
        if not job.exists():
            shutil.copytree(REPO / "study", job / "study", ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copytree(REPO / "search_spaces", job / "search_spaces")
        return subprocess.Popen(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                f"http://127.0.0.1:{self.dashboard}",
                "--working-dir",
                str(job),
                "--",
                "python",
                "-m",
                "study.sweep",
                *args,
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def kill_worker(self) -> None:
        """SIGKILL the worker node's raylet, as a machine that dies would leave it."""
        raylets = [p for p in psutil.Process(self.worker.pid).children(recursive=True) if p.name() == "raylet"]
        assert raylets
        for raylet in raylets:
            raylet.kill()

    def stop(self) -> None:
        """End both nodes and everything they started, by process id."""
        for node in (node for node in (self.worker, self.head) if node is not None):
            try:
                family = [node, *psutil.Process(node.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                family = [node]
            node.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=20)
            for process in family:
                with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                    process.kill()
        for temp in self.temps:
            shutil.rmtree(temp, ignore_errors=True)


def logged_rows(head_temp: Path) -> list[dict]:
    """Every result the job's driver has logged so far (a line it is still writing is left out)."""
    rows = []
    for log in head_temp.glob("session_*/artifacts/*/cluster/driver_artifacts/*/result.json"):
        for line in log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


@pytest.fixture(autouse=True)
def one_cluster_at_a_time():
    """xdist runs this file's tests in two processes: two clusters started side by side on two cores
    took over a minute to register a node in CI. The tests take turns (a lock in /tmp, which any
    other test run on this machine honours too)."""
    with open(Path(tempfile.gettempdir()) / "study-cluster-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture
def cluster(tmp_path):
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        made.stop()


def test_ray_job_submit_runs_a_sweep_on_both_nodes_and_survives_losing_one(cluster, tiny_corpus_dir, tmp_path):
    """One job loses the worker node once one of its trials there has finished two epochs: those
    trials go on from their checkpoints on the head (test_sweep checks that such a trial ends as an
    undisturbed one does). Beside it, a job without --storage is refused in one line."""
    space = tmp_path / "cluster.yaml"
    space.write_text(SPACE)
    shared = tmp_path / "shared"
    train = tiny_corpus_dir / "ptb.train.txt"  # 100 times the tiny corpus: epochs long enough to die inside
    train.write_text(train.read_text() * 100)
    common = [str(space), "--data-dir", str(tiny_corpus_dir)]

    worker_id = next(n["NodeID"] for n in cluster.nodes() if "node:__internal_head__" not in n["Resources"])
    hit = cluster.submit(*common, "--storage", str(shared / "hit"))
    # Without --storage on two nodes: refused before any trial, in one line.
    refused = finish(cluster.submit(*common))
    assert "error: --storage: a sweep on a cluster of 2 nodes needs one that every node and you can reach" in refused
    experiment = shared / "hit" / "cluster"
    # The job's driver logs each epoch on the head at once (its staging folder in the head's temp dir);
    # storage gets the logs only at Ray's uploads, seconds later, when the trial may have ended. A trial's
    # second epoch there means Tune has taken its first checkpoint: the restart goes on from it.
    staging = Path(cluster.temps[0])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not any(
        row.get("node_id") == worker_id and row.get("epoch", 0) >= 2 for row in logged_rows(staging)
    ):
        time.sleep(0.2)
    cluster.kill_worker()
    output = finish(hit)
    assert hit.returncode == 0 and "succeeded" in output, output[-3000:]
    trials = pd.read_parquet(experiment / "trials.parquet")
    epochs = pd.read_parquet(experiment / "epochs.parquet")
    assert len(trials) == 4 and set(trials["status"]) == {"completed"} and trials["num_failures"].sum() >= 1
    retried = trials[trials["num_failures"] > 0]
    assert all("," in ids for ids in retried["node_ids"])  # begun on the worker, finished on the head
    assert epochs["node_id"].nunique() == 2 and len(epochs) == 24  # each epoch once: none trained again
    for trial_id in retried["trial_id"]:
        nodes = epochs[epochs["trial_id"] == trial_id].sort_values("epoch")["node_id"].tolist()
        assert nodes[0] == worker_id and nodes[-1] != worker_id  # went on from its checkpoint, not from epoch 1
    assert (experiment / "summary.md").exists() and len(list(experiment.glob("*.png"))) == 4
    study = json.loads((experiment / "study.json").read_text())
    assert len(study["source_sha256"]) == 64 and study["git_commit"] is None  # the job's copy has no .git


def test_quarter_gpu_trials_pack_four_to_a_gpu_and_train_on_the_cpu_without_one(tmp_path, tiny_corpus_dir):
    """Ray's resources are logical: a node started with --num-gpus 1 on this CPU machine holds four
    --gpus-per-trial 0.25 trials at once. The plan says so, four trials run side by side, and each
    trains on the CPU (torch sees no CUDA here) and records that it did."""
    space = tmp_path / "gpu.yaml"
    space.write_text(SPACE.replace("epochs: 6", "epochs: 2").replace("grace_period: 6", "grace_period: 2"))
    cluster = Cluster(tmp_path, head_resources=("--num-cpus", "4", "--num-gpus", "1"), worker=False)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "study.sweep",
                str(space),
                "--data-dir",
                str(tiny_corpus_dir),
                "--storage",
                str(tmp_path / "out"),
                "--address",
                cluster.address,
                "--gpus-per-trial",
                "0.25",
            ],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        cluster.stop()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resources per trial: 1 CPU, 0.25 GPU; 4 trials at once on 4 CPUs and 1 GPUs" in done.stdout
    epochs = pd.read_parquet(tmp_path / "out" / "gpu" / "epochs.parquet")
    assert set(epochs["device"]) == {"cpu"}
    state = json.loads(max((tmp_path / "out" / "gpu").glob("experiment_state-*.json")).read_text())
    times = [json.loads(runtime) for _, runtime in state["trial_data"]]  # Ray's start and last-result times
    assert len(times) == 4 and max(t["start_time"] for t in times) < min(t["last_result_time"] for t in times)
