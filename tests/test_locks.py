"""The per-cluster host lock excludes a second process on the same machine (embedded mode has no shared server),
and a killed holder frees it at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from hciupgrade.hostlock import LockTimeout, host_lock

HOLDER = "from hciupgrade.hostlock import host_lock\nimport time, sys\n" \
         "with host_lock('c1', timeout=5):\n    print('held', flush=True)\n    time.sleep(60)\n"


def test_a_second_process_cannot_take_a_held_cluster_lock_until_the_holder_dies():
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True, env=os.environ)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout, match="c1"):
            with host_lock("c1", timeout=0.3):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        started = time.monotonic()
        with host_lock("c1", timeout=5):
            assert time.monotonic() - started < 1
    finally:
        holder.kill()
