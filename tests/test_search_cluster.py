"""tune/search_stage2.py on a real two-node Ray cluster on this machine (two raylets, one CPU each)."""
import os
import shutil
import subprocess
import sys
import tempfile

import pyarrow.parquet as pq
import pytest

from conftest import REPO
from test_search_stage2 import SCRIPT, write_features


@pytest.fixture
def two_node_cluster():
    """Head (1 CPU) + worker (1 CPU) under a private temp dir; stops only its own processes."""
    from ray.cluster_utils import Cluster

    # short path: Ray's unix sockets live under it (108-byte limit); never /tmp/ray, shared by other jobs
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "temp_dir": temp_dir})
    try:
        cluster.add_node(num_cpus=1, temp_dir=temp_dir)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.timeout(1800)  # several launches; generous for a loaded machine
def test_trials_run_on_both_nodes_of_a_cluster_joined_with_address_auto(two_node_cluster, tmp_path):
    features = write_features(tmp_path / "features")
    out, storage = tmp_path / "results", tmp_path / "shared_storage"
    env = {**os.environ, "RAY_ADDRESS": two_node_cluster.address}  # what `ray job submit` gives a job
    result = subprocess.run([sys.executable, str(SCRIPT), "--features", str(features), "--out", str(out),
                             "--address", "auto", "--storage", str(storage), "--methods", "ncm,tau_norm",
                             "--taus", "0,0.5,1,1.5,2"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(trials) == 2 + 5
    nodes = {node.node_id for node in two_node_cluster.list_all_nodes()}
    assert len(nodes) == 2 and {trial["ray_node_id"] for trial in trials} == nodes
    assert all(trial["hostname"] and trial["node_ip"] for trial in trials)
    assert (storage / "stage2").is_dir() and not (out / "ray").exists()  # --storage, not the default


@pytest.mark.slow
@pytest.mark.timeout(1800)  # several launches; generous for a loaded machine
def test_the_search_runs_as_a_ray_job(tmp_path):
    """`ray job submit -- python tune/search_stage2.py --address auto`: Ray's way to drive a remote cluster."""
    from ray.cluster_utils import Cluster

    from launchers import free_port

    temp_dir, port = tempfile.mkdtemp(prefix="ray", dir="/tmp"), free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_port": port, "temp_dir": temp_dir})
    try:
        cluster.add_node(num_cpus=1, temp_dir=temp_dir)
        cluster.wait_for_nodes()
        features, out = write_features(tmp_path / "features"), tmp_path / "results"
        submit = [os.path.join(os.path.dirname(sys.executable), "ray"), "job", "submit", "--address",
                  f"http://127.0.0.1:{port}", "--", sys.executable, str(SCRIPT), "--features", str(features),
                  "--out", str(out), "--address", "auto", "--methods", "ncm,tau_norm", "--taus", "0,1"]
        result = subprocess.run(submit, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        assert "succeeded" in result.stdout
        assert len(pq.read_table(out / "trials.parquet")) == 2 + 2
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # several launches; generous for a loaded machine
def test_losing_the_worker_node_mid_search_still_finishes_every_trial(two_node_cluster, tmp_path):
    import time

    features, out = write_features(tmp_path / "features"), tmp_path / "results"
    env = {**os.environ, "RAY_ADDRESS": two_node_cluster.address}
    # cRT trials of some seconds each, so the node goes while trials are running
    search = subprocess.Popen([sys.executable, str(SCRIPT), "--features", str(features), "--out", str(out),
                               "--address", "auto", "--methods", "crt", "--lrs", "0.05,0.1,0.2,0.4",
                               "--set", "crt.epochs=300"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    experiment = out / "ray" / "stage2"
    deadline = time.time() + 600
    while not (experiment.is_dir() and any(p.is_dir() for p in experiment.iterdir())):
        assert search.poll() is None and time.time() < deadline, "the search ended before trials started"
        time.sleep(0.05)
    worker = next(node for node in two_node_cluster.list_all_nodes() if not node.is_head())
    two_node_cluster.remove_node(worker)  # SIGKILLs that raylet and its workers
    output, _ = search.communicate(timeout=900)
    assert search.returncode == 0, output[-4000:]
    assert len(pq.read_table(out / "trials.parquet")) == 4


@pytest.mark.timeout(1800)  # two Ray starts; generous for a loaded machine
def test_without_address_the_search_starts_its_own_ray_beside_a_running_cluster(two_node_cluster, tmp_path):
    """A cluster on this machine (Ray notes its address in /tmp/ray/ray_current_cluster, as `ray start` and
    ray.cluster_utils do) is not joined, nor refused with Ray's 'num_cpus must not be provided', without --address."""
    features, out = write_features(tmp_path / "features"), tmp_path / "results"
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--features", str(features), "--out", str(out),
                             "--num-cpus", "1", "--methods", "ncm,tau_norm", "--taus", "0,1"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    trials = pq.read_table(out / "trials.parquet").to_pylist()
    assert len(trials) == 2 + 2
    nodes = {node.node_id for node in two_node_cluster.list_all_nodes()}
    assert not {trial["ray_node_id"] for trial in trials} & nodes
