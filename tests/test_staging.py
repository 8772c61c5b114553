"""Staging folders: only romer's own, recognisable ones are removed, and only when their owner has ended (this
host) or they are over a day old (another host)."""

import os
import subprocess
import sys

from romer.staging import STALE_AFTER_S, _host_hash, is_stale, make_staging, remove_stale


def ended_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_only_a_dead_owners_staging_folder_is_removed(tmp_path):
    out = tmp_path / "calibrated"
    mine = make_staging(out)  # this process: alive
    assert mine.name.startswith(".calibrated.romer-staging-") and mine.stat().st_mode & 0o777 == 0o700
    from romer.owners import Owner

    me = Owner.this_process()
    dead = tmp_path / f".calibrated.romer-staging-{ended_pid()}.{me.start}.{_host_hash(me.host)}-abc_12"
    foreign = tmp_path / f".calibrated.romer-staging-1.1.{_host_hash('elsewhere')}-xyz"
    unrelated = [tmp_path / ".calibrated.abc123", tmp_path / ".other.romer-staging-1.1.00000000-q"]
    for folder in (dead, foreign, *unrelated):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
    assert remove_stale(out) == [dead]
    assert {p.name for p in tmp_path.iterdir()} == {mine.name, foreign.name, *(p.name for p in unrelated)}
    old = foreign.stat().st_mtime + STALE_AFTER_S + 1  # another host's folder: removed after a day only
    assert not is_stale(foreign, out, now=old - 2) and is_stale(foreign, out, now=old)
    os.utime(foreign, (0, 0))
    assert remove_stale(out) == [foreign] and mine.is_dir()
