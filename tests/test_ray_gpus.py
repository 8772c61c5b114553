"""Ray over GPUs: each worker asks for its GPU share where the cluster has GPUs and the config's device is not the
CPU, and the trials spread over distinct GPUs. Tested on the CPU: a local Ray cluster that declares two GPUs
(Ray schedules by declared resources and tells each actor which GPU ids it was given)."""

from __future__ import annotations

import os

import pytest

from romer.errors import UserError
from romer.experiment.config_file import load_config
from romer.experiment.runner import actor_count, gpus_per_worker, run_experiment
from romer.store import ResultsStore
from tests.test_experiment_runner import fake_evaluator

SMALL = ["name=gpus", "models=[olmoe-tiny, qwenmoe-tiny]", "chip.chips=2", "methods=[clean, noisy]"]


def gpu_reporting_evaluator(group, names):
    """The fake evaluator, each result also saying which GPUs Ray gave the actor that computed it."""
    import ray

    for result in fake_evaluator(group, names):
        yield {**result, "gpu_ids": [str(i) for i in ray.get_gpu_ids()], "pid": os.getpid(),
               "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


@pytest.mark.parametrize("device, share, cluster, expected", [
    ("auto", None, 2.0, 1.0),   # GPUs there, device not cpu: one GPU each by default
    ("auto", 0.5, 2.0, 0.5),    # the config's fraction
    ("cpu", None, 2.0, 0.0),    # the config asks for the CPU: no GPU held idle
    ("auto", None, 0.0, 0.0),   # a cluster without GPUs
])
def test_gpus_per_worker_follows_the_cluster_and_the_config(device, share, cluster, expected):
    overrides = SMALL + [f"eval.device={device}"] + ([f"run.gpus_per_worker={share}"] if share else [])
    assert gpus_per_worker(load_config("default", overrides), cluster) == expected


@pytest.mark.parametrize("workers, groups, share, cluster, expected", [
    (8, 4, 1.0, 2.0, 2),     # two GPUs, one each: two actors, whatever --workers says
    (8, 8, 0.5, 2.0, 4),     # half a GPU each: four actors on two GPUs
    (3, 8, 0.0, 2.0, 3),     # no GPU asked for: --workers
    (8, 2, 0.25, 4.0, 2),    # never more actors than groups
])
def test_actors_never_outnumber_the_gpu_shares(workers, groups, share, cluster, expected):
    assert actor_count(workers, groups, share, cluster) == expected


def test_a_fraction_below_zero_is_a_config_error():
    with pytest.raises(UserError, match="gpus_per_worker"):
        load_config("default", SMALL + ["run.gpus_per_worker=-1"])


@pytest.fixture
def two_gpu_cluster():
    """A local Ray cluster declaring two GPUs (one Ray start: the CPU case is the unit test above)."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'romer[ray]')")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():  # the shared CPU cluster (conftest.ray_cluster): this test declares GPUs
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_workers_each_get_their_own_gpu(two_gpu_cluster, tmp_path):
    assert two_gpu_cluster.cluster_resources().get("GPU") == 2
    config = load_config("default", SMALL + ["eval.device=auto"])
    summary = run_experiment(config, tmp_path / "gpu.sqlite", evaluator=gpu_reporting_evaluator, backend="ray",
                             workers=4, progress=False)
    assert summary.computed == 8
    with ResultsStore(tmp_path / "gpu.sqlite") as store:
        rows = store.rows()
    by_actor = {}
    for row in rows:
        metrics = row["metrics"]
        assert len(metrics["gpu_ids"]) == 1, metrics["gpu_ids"]  # one whole GPU per actor
        assert metrics["cuda_visible"] == metrics["gpu_ids"][0]  # and torch inside sees only that one
        by_actor.setdefault(metrics["pid"], set()).update(metrics["gpu_ids"])
    # --workers 4 on two GPUs: two actors (not four waiting forever), on distinct GPUs, both used (4 groups)
    assert len(by_actor) == 2 and all(len(ids) == 1 for ids in by_actor.values())
    assert set.union(*by_actor.values()) == {"0", "1"}

