"""One writer per trial: two `romer run` processes on one store split the trials (each computed exactly once) and
the `runs` table counts what each computed; leases of ended or expired owners are taken over.

The two-process test is driven by lines the children print (never by sleeps): process A leases the first group and
parks inside it (its evaluator blocks on stdin); B computes everything else and then says it waits for A's trials;
only then does the test let A go on.
"""

import os
import subprocess
import sys
from collections import Counter

import pytest

from romer.experiment.config_file import load_config
from romer.owners import Owner
from romer.store import ResultsStore
from romer.store.lease import WAIT, LeaseTimes, TrialClaims
from tests.test_experiment_runner import ROOT, SAFETY_S, SMALL, GatedEvaluator, spawn, wait_for_line

TOTAL = 24  # SMALL: 2 models × 3 chips × 4 methods


class LoggedEvaluator(GatedEvaluator):
    """GatedEvaluator that appends "pid trial-key" to the file ROMER_TEST_LOG for every trial it computes, and
    prints "evaluating MODEL CHIP" (after the runner leased the group, before its first result)."""

    def __call__(self, group, names):
        print(f"evaluating {group.model} {group.chip['seed']}", flush=True)
        for result in super().__call__(group, names):
            with open(os.environ["ROMER_TEST_LOG"], "a") as log:
                log.write(f"{os.getpid()} {group.trial_key(result['method'])}\n")
            yield result


def run_args(out, backend="local"):
    return [sys.executable, "-m", "romer.cli.main", "run", *[x for s in SMALL for x in ("--set", s)], "--out",
            str(out), "--backend", backend, "--workers", "2",
            "--evaluator", "tests.test_concurrent_runs:LoggedEvaluator"]


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_two_runs_on_one_store_split_the_trials(tmp_path, backend):
    if backend == "ray":
        pytest.importorskip("ray", reason="ray is not installed (pip install 'romer[ray]')")
    out, log = tmp_path / "run", tmp_path / "computed.log"
    first = spawn(run_args(out), ROMER_TEST_GATE="0", ROMER_TEST_LOG=str(log))
    wait_for_line(first, r"^evaluating ")  # A holds the first group's leases and is parked inside it
    second = spawn(run_args(out, backend), ROMER_TEST_LOG=str(log))
    wait_for_line(second, r"^small: waiting for 4 trial\(s\) that another process is computing")
    first.stdin.write("\n")
    first.stdin.flush()
    outputs = [process.communicate(timeout=SAFETY_S) for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [err[-2000:] for _, err in outputs]
    computed = Counter(line.split()[1] for line in log.read_text().splitlines())
    config = load_config("default", SMALL)
    assert set(computed) == {g.trial_key(m) for g in config.groups() for m in g.method_names}
    assert set(computed.values()) == {1}, "a trial was computed twice"
    assert "4 trials computed, 0 already stored, 20 stored by another process" in outputs[0][0]
    assert "20 trials computed, 0 already stored, 4 stored by another process" in outputs[1][0]
    with ResultsStore(out / "results.sqlite") as store:
        assert sorted(run["computed"] for run in store.runs()) == [4, 20]
        assert store.count() == TOTAL and store.leases() == {}
    assert (out / "report.html").is_file()


def group_keys(config):
    group = config.groups()[0]
    return group, set(group.trial_keys().values())


def test_a_live_owners_lease_is_kept_until_it_expires(tmp_path):
    config = load_config("default", SMALL)
    group, keys = group_keys(config)
    elsewhere = "another-host:4242:1"  # its liveness cannot be seen from here: only the expiry counts
    with ResultsStore(tmp_path / "s.sqlite") as store:
        assert store.claim(keys, elsewhere, ttl_s=10, now=100) == keys
        assert store.claim(keys, "me:1:1", ttl_s=10, now=109) == set()
        assert store.claim(keys, "me:1:1", ttl_s=10, now=110) == keys  # expired: taken over
        assert {owner for owner, _ in store.leases().values()} == {"me:1:1"}
        this = str(Owner.this_process())  # alive on this host: kept even by another owner id
        assert store.claim(keys, this, ttl_s=10, now=200) == keys
        assert store.claim(keys, "me:1:1", ttl_s=10, now=205) == set()


def test_an_ended_owners_lease_is_taken_over_at_once(tmp_path):
    config = load_config("default", SMALL)
    group, keys = group_keys(config)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = str(Owner(Owner.this_process().host, int(ended.stdout), "1"))
    with ResultsStore(tmp_path / "s.sqlite") as store:
        assert Owner.parse(dead).alive() is False
        assert store.claim(keys, dead, ttl_s=1e6, now=0) == keys
        assert store.claim(keys, "me:1:1", ttl_s=10, now=1) == keys  # long before the expiry


def test_claims_skip_held_trials_and_wait_for_them(tmp_path):
    """The first pass hands out what is free; held trials come back once stored elsewhere (counted), and WAIT is
    returned while they are still held."""
    config = load_config("default", SMALL)
    groups = config.groups()[:2]
    other = str(Owner.this_process())  # alive
    with ResultsStore(tmp_path / "s.sqlite") as store:
        store.save_config(config.config_hash, config.name, config.model_dump(mode="json"))
        assert store.claim(set(groups[0].trial_keys().values()), other, ttl_s=60)
        told, waits = [], []
        claims = TrialClaims(store, [(g, set(g.method_names)) for g in groups], owner="me:1:1",
                             times=LeaseTimes(poll_s=0), on_stored_elsewhere=lambda g, n: told.append(n),
                             on_wait=lambda count, owners: waits.append((count, owners)))
        assert claims.take() == (groups[1], set(groups[1].method_names))
        assert claims.take() is WAIT and claims.take() is WAIT and waits == [(4, [other])]  # said once
        from tests.test_experiment_runner import fake_result

        for method in groups[0].methods:  # the other process finishes its group
            store.add(groups[0], fake_result(groups[0], method), {"git": "x", "versions": {}})
        assert claims.take() is None and sorted(told) == sorted(groups[0].method_names)
        assert claims.stored_elsewhere == 4


def test_a_run_that_fails_releases_its_leases_and_keeps_its_error(tmp_path, monkeypatch):
    """A full disk while storing trial 3: the error that ends the run is the one raised (not one from releasing the
    leases), and no lease outlives the run."""
    import sqlite3

    from romer.experiment.runner import run_experiment
    from tests.test_experiment_runner import fake_evaluator

    real_add, calls = ResultsStore.add, []

    def full_disk_at_the_third(self, group, result, prov=None):
        calls.append(result["method"])
        if len(calls) == 3:
            raise sqlite3.OperationalError("database or disk is full")
        return real_add(self, group, result, prov)

    monkeypatch.setattr(ResultsStore, "add", full_disk_at_the_third)
    config = load_config("default", SMALL)
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        run_experiment(config, tmp_path / "s.sqlite", evaluator=fake_evaluator, progress=False)
    with ResultsStore(tmp_path / "s.sqlite") as store:
        assert store.count() == 2 and store.leases() == {}

    def locked(self, owner, keys=None):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(ResultsStore, "release", locked)  # releasing fails too: the first error still ends the run
    calls.clear()
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        run_experiment(config, tmp_path / "s.sqlite", evaluator=fake_evaluator, progress=False)


def test_a_renewed_lease_outlives_its_first_expiry(tmp_path):
    config = load_config("default", SMALL)
    _, keys = group_keys(config)
    with ResultsStore(tmp_path / "s.sqlite") as store:
        assert store.claim(keys, "me:1:1", ttl_s=10, now=0) == keys
        assert store.renew("me:1:1", ttl_s=10, now=8) == 4
        assert store.claim(keys, "you:2:2", ttl_s=10, now=12) == set()  # renewed until 18
        assert store.claim(keys, "you:2:2", ttl_s=10, now=18) == keys


def test_the_heartbeat_renews_from_its_thread_and_releases_on_exit(tmp_path):
    """A lease that expired long ago (Unix time 10) is renewed by the heartbeat's own connection; on exit every
    lease of the owner is gone. Waits on the store's state (a watchdog bounds it), never on a sleep."""
    import time

    from romer.store.lease import Heartbeat

    config = load_config("default", SMALL)
    _, keys = group_keys(config)
    path = tmp_path / "s.sqlite"
    with ResultsStore(path) as store:
        store.claim(keys, "me:1:1", ttl_s=10, now=0)
        with Heartbeat(path, "me:1:1", LeaseTimes(ttl_s=600, renew_s=0)):
            watchdog = time.monotonic() + SAFETY_S
            while min(expires for _, expires in store.leases().values()) < 1e9:
                assert time.monotonic() < watchdog, "the heartbeat never renewed"
            assert all(expires > time.time() + 500 for _, expires in store.leases().values())
        assert store.leases() == {}
