"""Two Ray nodes on one machine: placement across nodes is real, not assumed.

A head and a worker are started as separate ``ray start --block`` processes, each with one logical GPU (CPU mode's
device slot), as two hosts would. A CPU-mode PRPO run then joins that cluster with the trainer (one rank) and an
``own_pool`` PRM (one rank): with one GPU per node the two pools cannot share a node, and the test reads Ray's own
actor table to check that the trainer's worker and the PRM's worker really ran on different nodes. Then
``scripts/slurm/ray_on_slurm.sbatch`` runs end to end with stand-ins for ``scontrol`` and ``srun``
(``tests/system/multinode_support/bin``) that start its head and worker on this machine as SLURM would on two hosts, and
a CPU-mode test recipe (``tests/system/multinode_support/cpu_recipe.sh``); and the script's wait for its nodes is checked to
end on time when a node never comes up.

The clusters here are private: own temporary folder, own ports, own worker-port range, and they are stopped by
the process ids of their ``ray start`` processes (never ``ray stop``, which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.multinode]

REPO = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent / "multinode_support"
SBATCH = REPO / "scripts" / "slurm" / "ray_on_slurm.sbatch"
RAY = str(Path(sys.executable).with_name("ray"))

#: a training run of 2 steps on 2 cores, start-up included, takes 2-7 minutes (7 on a machine loaded by other
#: work); a hang ends here, well within the suite's 30 minutes
RUN_TIMEOUT_S = 900
#: each node must be up within this (a `ray start` takes 5-30 s on a 2-core machine)
CLUSTER_START_TIMEOUT_S = 120
STEPS = 2

#: environment of every Ray process of these clusters
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray 2.60 turns token authentication on for a new head when ~/.ray/auth_token exists, but neither a worker
    # node nor a driver that connects by address turns it on by itself: they would be refused (InvalidAuthToken).
    # One explicit mode for the whole private cluster (the SLURM test covers the token mode).
    "RAY_AUTH_MODE": "disabled",
    # no idle Python workers started ahead of use (one per logical CPU): two nodes' worth on 2 cores slows start-up
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
}


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _worker_port_range(index: int) -> tuple[int, int]:
    """A range of worker ports below Linux's ephemeral range (32768-) and above Ray's default one (10002-19999, used
    by other Ray clusters on the machine), different per node and, by pid, per test process."""
    base = 20000 + (os.getpid() % 12) * 1000 + index * 500
    return base, base + 499


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (with the pid, an identity that survives pid reuse)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _process_tree(pids: list[int]) -> list[tuple[int, int]]:
    """``pids`` and every process below them (from /proc), as ``(pid, start time)``."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], list(pids)
    while todo:
        p = todo.pop()
        st = _start_time(p)
        if st is not None:
            out.append((p, st))
        todo.extend(children.get(p, []))
    return out


def _still_running(proc: tuple[int, int]) -> bool:
    """The very process (same pid and start time) exists and is not a zombie."""
    pid, start = proc
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[19]) == start


def _kill_tree(procs: list[tuple[int, int]]) -> None:
    for proc in procs:
        if _still_running(proc):
            try:
                os.kill(proc[0], signal.SIGKILL)
            except ProcessLookupError:
                pass


def query_cluster(address: str, env: dict[str, str], timeout: float = 120) -> dict:
    """The cluster's nodes and every actor it has run, from Ray's own tables (``multinode_support/ray_actors.py``,
    in a subprocess: the test process itself never joins a cluster)."""
    proc = subprocess.run([sys.executable, str(SUPPORT / "ray_actors.py"), address], env=env, capture_output=True,
                          text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RAY_ACTORS_JSON "):
            return json.loads(line[len("RAY_ACTORS_JSON "):])
    raise RuntimeError(f"cluster query failed (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def node_args(temp_dir: Path, index: int) -> list[str]:
    """``ray start`` arguments that two nodes on one machine must not share (real hosts never do): their ports and
    worker-port range; and a private temp folder (not /tmp/ray, which other clusters on the machine use)."""
    om, nm, agent, agent_grpc, rt_env, metrics = _free_ports(6)
    lo, hi = _worker_port_range(index)
    return [f"--object-manager-port={om}", f"--node-manager-port={nm}", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={rt_env}",
            f"--metrics-export-port={metrics}", f"--min-worker-port={lo}", f"--max-worker-port={hi}",
            f"--temp-dir={temp_dir}", "--object-store-memory=500000000", "--disable-usage-stats"]


class NodeStartError(RuntimeError):
    """A ``ray start`` of the private cluster exited or did not come up."""


class TwoNodeRay:
    """A Ray head and a Ray worker on this machine, each its own ``ray start --block`` process with its own
    logical GPU, ports and worker-port range, sharing one private temporary folder."""

    def __init__(self, root: Path, *, head_cpus: int = 8, worker_cpus: int = 8, gpus_per_node: int = 1):
        # 8 logical CPUs per node, as the CPU config gives its single local node: each of verl's pool bundles asks
        # for 3 (max_colocate_count) beside its GPU, and actors that hold a CPU (TransferQueue's controller and storage
        # unit, 1 each) may land on either node. With 4 on the worker, the own_pool PRM's bundle once found that
        # node's GPU free but only 2 CPUs, and the job waited for the placement group forever after "ready to fit"
        # (the trainer's start-up check, check_cluster_resources, now refuses such a node when it sees it so).
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.head_cpus, self.worker_cpus, self.gpus = head_cpus, worker_cpus, gpus_per_node
        self.ip = "127.0.0.1"
        self.env = {**os.environ, **RAY_ENV}
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []
        self.temp_dirs: list[Path] = []
        self.attempts = 0

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "w") as log:
            # its own session: `ray start` makes itself a process-group leader anyway, and a signal to pytest's
            # group must not reach it before stop() does
            proc = subprocess.Popen([RAY, "start", *args, "--block"], env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _wait_started(self, proc: subprocess.Popen, name: str) -> None:
        """Until its ``ray start`` says the node runs (it has registered with the GCS by then)."""
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if "Ray runtime started." in self.log_tail(name, 100_000):
                return
            if proc.poll() is not None:
                raise NodeStartError(f"`ray start` ({name}) exited with {proc.returncode}:\n{self.log_tail(name)}")
            time.sleep(0.5)
        raise NodeStartError(f"`ray start` ({name}) not started within {CLUSTER_START_TIMEOUT_S} s:\n"
                             f"{self.log_tail(name)}")

    def _start_once(self) -> None:
        # one temp folder per node, as on two hosts (a shared one would make each node's log monitor stream every
        # node's logs to the driver); Ray's unix sockets live there: short paths keep them below the 107-byte limit
        head_dir, worker_dir = (Path(tempfile.mkdtemp(prefix=f"rmn{k}", dir="/tmp")) for k in "hw")
        self.temp_dirs += [head_dir, worker_dir]
        self.port, client_port = _free_ports(2)
        self.address = f"{self.ip}:{self.port}"
        head = self._spawn("head", ["--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}",
                                    f"--num-gpus={self.gpus}", "--include-dashboard=false",
                                    f"--ray-client-server-port={client_port}", f"--node-ip-address={self.ip}",
                                    *node_args(head_dir, 0)])
        self._wait_started(head, "head")
        worker = self._spawn("worker", [f"--address={self.address}", f"--num-cpus={self.worker_cpus}",
                                        f"--num-gpus={self.gpus}", f"--node-ip-address={self.ip}",
                                        *node_args(worker_dir, 1)])
        self._wait_started(worker, "worker")
        self.nodes = [n for n in query_cluster(self.address, self.env)["nodes"] if n["alive"]]
        if len(self.nodes) != 2:
            raise NodeStartError(f"expected 2 alive Ray nodes, the GCS lists {self.nodes}")

    def start(self, attempts: int = 2) -> "TwoNodeRay":
        """Start the head, then the worker. Ray gives a starting node 30 s (hard-coded) to register with the GCS;
        on a machine loaded by other work that can pass, so a failed start is retried once on fresh ports."""
        for attempt in range(1, attempts + 1):
            self.attempts = attempt
            try:
                self._start_once()
                return self
            except NodeStartError:
                if attempt == attempts:
                    raise
                self.stop()
                self.procs = []
        raise AssertionError("unreachable")

    def log_tail(self, name: str, n: int = 3000) -> str:
        p = self.logs / f"{name}.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def stop(self, grace_s: float = 20, keep_logs: bool = False) -> list[int]:
        """SIGTERM each ``ray start`` (it drains its node and stops the processes it started), give the whole process
        tree ``grace_s`` to end, then SIGKILL what is left. Returns the pids that needed SIGKILL (should be none:
        SIGTERM to ``ray start --block`` is how the SLURM script stops its nodes too)."""
        tree = _process_tree([p.pid for p in self.procs])
        for p in reversed(self.procs):  # worker first, then head
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                pass
        tree += _process_tree([pid for pid, _ in tree])  # anything started meanwhile below a known process
        while time.monotonic() < deadline and any(_still_running(p) for p in tree):
            time.sleep(0.5)
        needed_kill = sorted({pid for pid, st in tree if _still_running((pid, st))})
        _kill_tree(tree)
        for p in self.procs:
            p.wait(timeout=10)
        for d in self.temp_dirs:
            if keep_logs:  # each node's Ray logs (raylet, workers), for a failed run
                shutil.copytree(d / "session_latest" / "logs", self.logs / f"ray_{d.name}", dirs_exist_ok=True,
                                ignore_dangling_symlinks=True)
            shutil.rmtree(d, ignore_errors=True)
        return needed_kill


# ------------------------------------------------------------------------------------------------ what the runs check
#: the PRM on a pool of its own: one logical GPU on one node (the trainer keeps its one GPU on the other node)
OWN_POOL_PRM = ["prm.placement=own_pool", "prm.nnodes=1", "prm.n_gpus_per_node=1"]
#: ray.init() refuses num_cpus / num_gpus when it joins an existing cluster; the CPU config sets both for the local
#: cluster it otherwise starts
JOIN_CLUSTER = ["ray_kwargs.ray_init.num_cpus=null", "ray_kwargs.ray_init.num_gpus=null"]
#: metrics every step must log, finite
STEP_METRICS = ["actor/pg_loss", "prpo/prm_score/mean", "adv/mean", "timing_s/prm", "timing_s/gen", "prm/score_mean"]


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory):
    from examples.credit_assignment.tiny_assets import build_tiny_assets

    return build_tiny_assets(tmp_path_factory.mktemp("tiny_assets_multinode"), n_train=64, n_val=8)


def _prpo_command(assets, out: Path, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    from examples.credit_assignment.quickstart import tiny_command

    out.mkdir(parents=True, exist_ok=True)
    return tiny_command("prpo", assets_dir=assets.root, steps=STEPS, out_dir=out, metrics_file=out / "metrics.jsonl",
                        extra=extra, python=sys.executable)


def _records(out: Path) -> list[dict]:
    f = out / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()] if f.exists() else []


def _check_steps(records: list[dict]) -> None:
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        for key in STEP_METRICS:
            assert key in r["data"], f"step {r['step']}: {key} missing"
            assert math.isfinite(float(r["data"][key])), f"step {r['step']}: {key} = {r['data'][key]}"
        assert r["data"]["prm/own_pool"] == 1 and r["data"]["prm/ranks"] == 1


def _placement(snapshot: dict) -> dict[str, list[dict]]:
    """The job's workers by role, from Ray's actor table: the trainer's worker (verl's fused actor/rollout/ref
    ``WorkerDict``), the PRM's (``PRMWorker``) and verl's vLLM servers (``vllm_server_<replica>_<node>``)."""
    actors = snapshot["actors"]
    kind = lambda a: a["class_name"].rsplit(".", 1)[-1]  # noqa: E731  (verl's is "create_colocated_....WorkerDict")
    return {"trainer": [a for a in actors if kind(a) == "WorkerDict"],
            "prm": [a for a in actors if kind(a) == "PRMWorker"],
            "rollout": [a for a in actors if a["name"].startswith("vllm_server_")]}


def _check_across_nodes(snapshot: dict) -> tuple[str, str]:
    """One trainer rank and one PRM rank, on the two different nodes of the cluster; the rollout beside the
    trainer. Returns (trainer node id, PRM node id)."""
    nodes = {n["node_id"] for n in snapshot["nodes"]}
    assert len(nodes) == 2, snapshot["nodes"]
    roles = _placement(snapshot)
    assert len(roles["trainer"]) == 1, f"expected one trainer rank, got {roles['trainer']}"
    assert len(roles["prm"]) == 1, f"expected one PRM rank, got {roles['prm']}"
    trainer_node, prm_node = roles["trainer"][0]["node_id"], roles["prm"][0]["node_id"]
    assert trainer_node in nodes and prm_node in nodes
    assert trainer_node != prm_node, f"trainer and PRM both ran on node {trainer_node}"
    assert roles["rollout"] and all(a["node_id"] == trainer_node for a in roles["rollout"]), roles["rollout"]
    return trainer_node, prm_node


# ------------------------------------------------------------------------------------------------ two `ray start` nodes
@pytest.fixture(scope="module")
def two_node_run(tiny_assets, tmp_path_factory):
    """PRPO for two steps on a head and a worker started by hand, trainer and own_pool PRM one rank each. The
    cluster is queried after the run and stopped (by pid) before the tests read the results, also when something
    failed (it must not idle beside the next test's cluster)."""
    root = tmp_path_factory.mktemp("two_nodes")
    cluster = TwoNodeRay(root / "cluster")
    rc = None
    try:
        t0 = time.monotonic()
        cluster.start()
        started_s = time.monotonic() - t0
        out = root / "prpo_own_pool"
        cmd, env = _prpo_command(tiny_assets, out, [*OWN_POOL_PRM, *JOIN_CLUSTER,
                                                    f"+ray_kwargs.ray_init.address={cluster.address}"])
        env.update(RAY_ENV)
        env.pop("RAY_ADDRESS", None)
        log = out / "log.txt"
        t1 = time.monotonic()
        with open(log, "w") as fh:
            try:
                rc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S,
                                    cwd=out).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        run_s = time.monotonic() - t1
        snapshot = query_cluster(cluster.address, cluster.env)
        head = {n["node_id"]: "head" if n["head"] else "worker" for n in snapshot["nodes"]}
        where = {role: [head.get(a["node_id"], "?") for a in actors] for role, actors in _placement(snapshot).items()}
        print(f"two-node cluster up in {started_s:.0f} s (attempt {cluster.attempts}); training run {run_s:.0f} s; "
              f"ran on: {where}")
    finally:
        left = cluster.stop(keep_logs=rc != 0)
    return {"rc": rc, "log": log.read_text(errors="replace"), "records": _records(out), "nodes": cluster.nodes,
            "snapshot": snapshot, "left": left}


def _require_success(run: dict) -> None:
    if run["rc"] != 0:
        pytest.fail(f"the two-node run failed (rc={run['rc']}); log tail:\n{run['log'][-6000:]}")


def test_two_separate_ray_nodes_each_with_one_logical_gpu(two_node_run):
    nodes = two_node_run["nodes"]
    assert len(nodes) == 2 and len({n["node_id"] for n in nodes}) == 2
    assert sorted(n["head"] for n in nodes) == [False, True]
    assert all(n["resources"].get("GPU") == 1 for n in nodes), [n["resources"] for n in nodes]


def test_sigterm_to_ray_start_stops_each_node_completely(two_node_run):
    assert two_node_run["left"] == [], f"processes of the two-node cluster still running {20} s after SIGTERM to " \
                                       f"their `ray start`: {two_node_run['left']}"


def test_trainer_and_own_pool_prm_run_on_different_nodes(two_node_run):
    _require_success(two_node_run)
    _check_across_nodes(two_node_run["snapshot"])


def test_training_steps_complete_with_finite_metrics_across_nodes(two_node_run):
    _require_success(two_node_run)
    _check_steps(two_node_run["records"])


# ------------------------------------------------------------------------------------------------ the SLURM script
def _stop_recorded(pids_file: Path, wait_s: float) -> tuple[list[str], list[int]]:
    """Processes the srun stand-in started (``PID START_TIME HOST`` lines) and everything below them: wait up to
    ``wait_s`` for them to end by themselves, then SIGKILL what is left. Returns (hosts seen, pids that needed
    SIGKILL)."""
    if not pids_file.exists():
        return [], []
    recorded = [line.split() for line in pids_file.read_text().splitlines() if line.strip()]
    procs = [(int(pid), int(start)) for pid, start, _ in recorded]
    tree = _process_tree([pid for pid, start in procs if _still_running((pid, start))])
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(_still_running(p) for p in tree):
        time.sleep(0.5)
    tree += _process_tree([pid for pid, _ in tree])
    needed_kill = sorted({pid for pid, st in tree if _still_running((pid, st))})
    _kill_tree(tree)
    return [host for _, _, host in recorded], needed_kill


def _run_sbatch(assets, work: Path) -> dict:
    """Run the sbatch script with the stand-ins on this machine (its own ports, worker ports and temp folder for each
    stand-in host); stop what is left of its `ray start` steps by pid, even when it failed."""
    work.mkdir(parents=True)
    temp_dirs = [Path(tempfile.mkdtemp(prefix=f"rms{k}", dir="/tmp")) for k in "hw"]  # one per stand-in host
    port, client_port = _free_ports(2)
    token = work / "ray_token"
    token.write_text(os.urandom(32).hex())
    out = work / "run"
    cmd, env = _prpo_command(assets, out, [f"hydra.run.dir={work / 'hydra'}"])
    overrides = cmd[cmd.index("--config-name=prpo_trainer_cpu") + 1:]
    for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(k, None)
    env.update({k: v for k, v in RAY_ENV.items() if k != "RAY_AUTH_MODE"})
    env.update({
        "PATH": os.pathsep.join([str(SUPPORT / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")]),
        "PYTHON": sys.executable, "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_ID": "4242",
        "SLURM_SUBMIT_DIR": str(REPO), "SLURM_CPUS_PER_TASK": "8", "GPUS_PER_NODE": "1",
        "PRM_PLACEMENT": "own_pool", "PRM_NODES": "1", "RAY_PORT": str(port),
        "RAY_HEAD_WAIT_S": "3", "RAY_POLL_S": "3", "RAY_WAIT_S": str(CLUSTER_START_TIMEOUT_S),
        "RAY_AUTH_TOKEN_PATH": str(token), "LOG_DIR": str(work / "logs"), "RAY_ACTORS_OUT": str(work / "actors.json"),
        "SRUN_STUB_LOG": str(work / "srun.log"), "SRUN_STUB_PIDS": str(work / "srun.pids"),
        "SRUN_STUB_RAY_ARGS_node1": " ".join(["--include-dashboard=false", f"--ray-client-server-port={client_port}",
                                              *node_args(temp_dirs[0], 0)]),
        "SRUN_STUB_RAY_ARGS_node2": " ".join(node_args(temp_dirs[1], 1)),
    })
    log = work / "sbatch.log"
    t0 = time.monotonic()
    try:
        with open(log, "w") as fh:
            proc = subprocess.Popen(["bash", str(SBATCH), "tests/system/multinode_support/cpu_recipe.sh", *overrides],
                                    env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=work, start_new_session=True)
            try:
                rc = proc.wait(timeout=RUN_TIMEOUT_S + CLUSTER_START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
                rc = "timeout"
        seconds = time.monotonic() - t0
        # the script's exit trap stops its `ray start` steps; each node drains, then stops its processes
        hosts, killed = _stop_recorded(work / "srun.pids", wait_s=60)
    finally:
        _stop_recorded(work / "srun.pids", wait_s=0)
        for d in temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
    srun_log = work / "srun.log"
    return {"rc": rc, "log": log.read_text(errors="replace"), "seconds": seconds, "port": port, "hosts": hosts,
            "killed": killed, "steps": srun_log.read_text().splitlines() if srun_log.exists() else [],
            "actors": work / "actors.json", "out": out}


def test_ray_on_slurm_sbatch_runs_a_cpu_job_across_two_stand_in_hosts(tiny_assets, tmp_path):
    """``ray_on_slurm.sbatch`` unchanged in its steps: ``scontrol`` names node1 and node2, ``srun -w node1`` starts
    the head and ``srun -w node2`` the worker (here, on this machine), it waits for both, then runs a CPU-mode recipe
    through recipes/common.sh with PRM_PLACEMENT=own_pool; a Ray token in RAY_AUTH_TOKEN_PATH makes it set one
    authentication mode for the head, the worker and the driver."""
    r = _run_sbatch(tiny_assets, tmp_path / "attempt1")
    if r["rc"] != 0 and "timed out during startup" in r["log"]:
        # Ray gives a starting node 30 s (hard-coded) to register; a machine loaded by other work can exceed it
        r = _run_sbatch(tiny_assets, tmp_path / "attempt2")
    text, steps, port = r["log"], r["steps"], r["port"]
    assert r["rc"] == 0, f"sbatch script failed (rc={r['rc']}) after {r['seconds']:.0f} s; log tail:\n{text[-6000:]}"
    assert steps[0] == "node1 hostname --ip-address"
    assert any(s.startswith(f"node1 ray start --head --node-ip-address=127.0.0.1 --port={port} --num-gpus=1 "
                            "--num-cpus=8 --block") for s in steps), steps
    assert any(s.startswith(f"node2 ray start --address=127.0.0.1:{port} --num-gpus=1 --num-cpus=8 --block")
               for s in steps), steps
    assert len(steps) == 3 and sorted(set(r["hosts"])) == ["node1", "node2"], (steps, r["hosts"])
    assert "Ray authentication: RAY_AUTH_MODE=token" in text
    assert "Ray nodes alive: 2 / 2" in text and "trainer on 1 node(s), PRM on its own 1 node(s)" in text
    assert "recipe exited with status 0" in text
    assert r["killed"] == [], f"processes of the `ray start` steps still running 60 s after the script ended " \
                              f"(its exit trap sends them SIGTERM): {r['killed']}"
    _check_across_nodes(json.loads(r["actors"].read_text()))
    _check_steps(_records(r["out"]))


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.mark.parametrize("case", ["ray_start_exits", "cluster_check_hangs"])
def test_sbatch_wait_for_nodes_is_bounded(tmp_path, case):
    """The wait for the nodes ends on time: a `ray start` step that exits (e.g. its node timed out registering)
    ends the job at once, and a cluster check that hangs (ray.init() retries an address where no head answers for
    over ten minutes, measured on this machine) is cut at RAY_CHECK_TIMEOUT_S, so RAY_WAIT_S holds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if case == "ray_start_exits":
        _write_exe(bin_dir / "ray", "#!/usr/bin/env bash\n[[ $* == *--head* ]] && exit 1\nexec sleep 300\n")
    else:
        _write_exe(bin_dir / "ray", "#!/usr/bin/env bash\nexec sleep 300\n")
    _write_exe(bin_dir / "fakepython", "#!/usr/bin/env bash\nexec sleep 300\n")  # the cluster check never answers
    env = {**os.environ, "PATH": os.pathsep.join([str(bin_dir), str(SUPPORT / "bin"), os.environ["PATH"]]),
           "PYTHON": str(bin_dir / "fakepython"), "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_SUBMIT_DIR": str(REPO),
           "GPUS_PER_NODE": "1", "RAY_HEAD_WAIT_S": "1", "RAY_POLL_S": "1", "RAY_WAIT_S": "4",
           "RAY_CHECK_TIMEOUT_S": "2", "SRUN_STUB_PIDS": str(tmp_path / "srun.pids")}
    t0 = time.monotonic()
    try:
        r = subprocess.run(["bash", str(SBATCH), "tests/system/multinode_support/cpu_recipe.sh"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, start_new_session=True)
    finally:
        _stop_recorded(tmp_path / "srun.pids", wait_s=5)
    seconds = time.monotonic() - t0
    assert r.returncode == 2, (r.stdout, r.stderr)
    if case == "ray_start_exits":
        assert "the `ray start` step on node1 exited" in r.stderr, r.stderr
        assert seconds < 15, seconds
    else:
        assert "only 0 of 2 nodes joined the Ray cluster within 4 s" in r.stderr, r.stderr
        assert seconds < 20, seconds
