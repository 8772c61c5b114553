import os
import sys

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny matmuls on a busy 2-core machine: OpenMP threads spin-wait for ~1 s a forward; one thread does not."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ray_cluster():
    """One local Ray cluster (2 CPUs) for the in-process Ray tests, started by the first that needs it (the runner
    joins a running cluster: ``runner._ray_init``) and shut down at the end of the session; a test that needs
    another cluster shuts this one down first and the next user starts it again."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'romer[ray]')")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


@pytest.fixture(scope="session", autouse=True)
def _ray_down_at_the_end():
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
