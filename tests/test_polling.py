"""How often a long wait asks the cluster, and how late it sees the end: on a virtual clock, so the figures are
cluster seconds, exact, and free of this machine's timing."""

from __future__ import annotations

from hciupgrade.clock import ClusterClock
from tests.test_safety import private_home  # noqa: F401 - autouse: the engine's records stay in the test's home


class VirtualClock(ClusterClock):
    def __init__(self) -> None:
        super().__init__(1.0)
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, cluster_seconds: float) -> None:
        self.t += max(0.0, cluster_seconds)


def wait(ends_at: float, expected: float | None = None) -> tuple[float, int]:
    """(how late the end was seen, how many probes) for a wait that ends `ends_at` cluster seconds in."""
    clock, probes = VirtualClock(), [0]

    def probe() -> bool:
        probes[0] += 1
        return clock.t >= ends_at

    assert clock.wait_for(probe, timeout=4 * 3600, poll=15, max_poll=60, expected=expected)
    return clock.t - ends_at, probes[0]


def test_a_long_wait_backs_off_to_one_probe_a_minute():
    late, probes = wait(ends_at=3600 + 7)  # a setup of an hour
    assert late <= 60 and probes < 100  # not 240 probes at 15 s


def test_a_wait_that_took_as_long_on_the_last_node_sees_its_end_within_a_120th_of_it():
    for ends_at in (3300, 3600 + 7, 4200, 5300):  # this node's setup: a little faster, or up to half slower
        late, probes = wait(ends_at, expected=3600)
        assert late <= 30, ends_at  # an hour's setup seen ending within 30 s
        assert probes < ends_at / 30, ends_at  # not a probe every 15 s through the stretch it may end in
    far_off, _ = wait(ends_at=9000, expected=3600)  # much slower than the last node: back off again
    assert far_off <= 60


def test_a_short_wait_is_seen_within_its_first_polls():
    late, probes = wait(ends_at=20)  # a drain of 20 s
    assert late <= 15 and probes <= 3


def test_setup_and_the_restart_are_waited_for_on_the_nodes_with_a_call_per_ten_minutes():
    """Wait-UpdateTask.ps1, Wait-ClusterNodeState.ps1 and Wait-StorageRepair.ps1: the node (or another node, for a
    restart) waits and answers when the installer ends, the node is back or the resync is over; polling from here
    made a call every 5 to 60 s."""
    import math

    from hciupgrade.cluster import WAIT_CALL_SECONDS
    from hciupgrade.remote import PackagedScript
    from tests.test_safety import cluster, engine

    sim = cluster(nodes=3)
    calls: dict[str, int] = {}

    def count(node, call):
        if isinstance(call, PackagedScript) and call.filename.startswith("Wait-"):
            calls[call.filename] = calls.get(call.filename, 0) + 1

    outcome, _ = engine(sim, {"before": count}).run()
    assert outcome.succeeded, outcome.error
    d = sim.durations
    longest_install = d.install_minutes + d.install_spread_minutes
    # each resync, from the node's resume to the last repair job's end (the simulator's clock)
    resumes = [e["t"] for e in sim.events if e["kind"] == "resume"]
    ends = [e["t"] for e in sim.events if e["kind"] == "storage_job" and e["status"] == "Completed"]
    longest_resync = max(max((t for t in ends if t >= r), default=r) - r for r in resumes)
    per_node = {"Wait-UpdateTask.ps1": math.ceil(longest_install * 60 / WAIT_CALL_SECONDS) + 1,
                "Wait-ClusterNodeState.ps1": math.ceil(d.feature_update_restart_minutes * 60 / WAIT_CALL_SECONDS) + 2,
                # the wait before the resume, then the resync's
                "Wait-StorageRepair.ps1": math.ceil(longest_resync / WAIT_CALL_SECONDS) + 2}
    assert set(calls) == set(per_node)
    for script, most in per_node.items():
        assert calls[script] <= 3 * most, (script, calls[script])
    # every node's restart came after its setup ended, and every node came back on the target
    assert {n.build for n in sim.nodes.values()} == {sim.target_build}
