"""Who may change a cluster now (DESIGN.md invariant 8). A lock alone cannot say it: a run frozen past its lease (a
suspended VM, a closed laptop, SIGSTOP) wakes up believing it still holds the lock, while another run has taken the
cluster over. So every change a run makes carries its proof in the same remote call:

- the run's fence: a number that grows with each run that takes the cluster's lock. The run writes it on every node
  it reaches before it acts (Set-UpgradeOwner.ps1); every packaged script that changes a node refuses a caller whose
  fence is older than the node's (error id FencedOut), so a woken run can do nothing more;
- for the steps on a node it paused (install, restart, stopping an installer, resume), the node's mark must be the
  run's own (NotOurPause otherwise);
- and, before the call leaves this process, the lock's lease must still be confirmed (`Owner.check`): a run that
  cannot show its lease is current stops before it sends anything.

A run that loses the cluster raises LostOwnership: it does nothing more to the cluster (no recovery either: the
nodes are another run's now), records why, and names what it leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FENCE_KEY = r"HKLM:\SOFTWARE\hci-upgrade-fence"
FENCE_LEAF = "hci-upgrade-fence"  # the key's PSChildName, lower case
FENCED_OUT = "FencedOut"  # the packaged scripts' error id for a caller whose fence is older than the node's


class LostOwnership(Exception):
    """This run no longer owns the cluster: its lock's lease lapsed or could not be confirmed, or a node holds a
    newer run's fence. Nothing more is done to the cluster."""


def _always() -> None:
    return None


@dataclass
class Owner:
    """The run that owns the cluster now: its id (the mark it writes), its fence, and the lock's lease check."""

    run_id: str
    fence: int
    lease: Callable[[], None] = field(default=_always)  # raises LostOwnership when the lease is not current

    def check(self) -> None:
        self.lease()

    def parameters(self, *, marked: bool = False) -> dict[str, Any]:
        """What an owned script is told of its caller (RunId, Fence; -Marked: the node must carry the mark)."""
        from hciupgrade.remote import SWITCH

        return {"RunId": self.run_id, "Fence": self.fence, **({"Marked": SWITCH} if marked else {})}


@dataclass
class Held:
    """What a cluster lock hands the run that holds it: the lease check (raises LostOwnership), the lease's id
    (recorded, so that a later run can release the lease of a holder that died), and the fence taken under it (a
    run nested in the holder's process, such as post-OS's rolling restart, acts under the same fence)."""

    check: Callable[[], None] = field(default=_always)
    lease_id: str | None = None
    fence: int | None = None


def fence_of(values: dict[str, Any] | None) -> int:
    """The fence a node holds (0 when none was written)."""
    try:
        return int((values or {}).get("Fence") or 0)
    except (TypeError, ValueError):
        return 0
