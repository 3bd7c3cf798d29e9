"""What a node needs, decided in one place: a pure function names the node's position from facts read off the
cluster, and one table maps (mode, position) to what the run does with it. The plan, the dry run and the run
itself all read this table, so the dry run shows the steps the run will really take, adopted nodes included.

    position          facts                                                   upgrade            restart
    fresh             Up, nobody's pause, not on the target (asked)           every step         restart steps
    done              Up, on the target (not asked to restart)                skip               skip
    resyncing         Up, on the target, storage still repairing              wait for storage   wait for storage
    ours-paused       paused by us (record and mark), not restarted yet       continue at drain  continue at drain
    ours-back         paused by us, back on the target build                  finish it          continue at drain
    ours-away         ours, and Down, Joining or not answering                wait for it back   wait for it back
    paused-by-other   Paused without our mark                                 refuse             refuse
    down              not ours, Down or Joining                               refuse             refuse
    unreachable       not ours, WinRM does not answer                         refuse             refuse

"Ours" needs both pieces of evidence: the run record says a run of ours paused the node (written before the
call), and the node carries that run's mark (HKLM:\\SOFTWARE\\hci-upgrade, written by the same call before the
pause). A node that is away cannot show its mark; the record alone holds it until it answers again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from hciupgrade.psenums import NodeState
from hciupgrade.upgrade.runbook import (
    AFTER_REBOOT,
    CONTINUE_RESTART,
    CONTINUE_UPGRADE,
    FULL,
    RESTART,
    START_VMS,
    WAIT_STORAGE,
)


class Position(StrEnum):
    FRESH = "fresh"
    STAGED = "staged"  # Up on its old build, setup's first phase done (PreStage): its next restart upgrades it
    DONE = "done"
    RESYNCING = "resyncing"
    OURS_PAUSED = "ours-paused"
    OURS_BACK = "ours-back"
    OURS_AWAY = "ours-away"
    PAUSED_BY_OTHER = "paused-by-other"
    DOWN = "down"
    UNREACHABLE = "unreachable"


class Mode(StrEnum):
    UPGRADE = "upgrade"
    RESTART = "restart"


@dataclass(frozen=True)
class NodeFacts:
    """What the run knows of one node at one moment."""

    name: str
    state: NodeState | None  # the cluster's view; None when no node of the cluster answered
    reachable: bool  # the node's own WinRM answers
    on_target: bool  # upgrade: its build reached the target; restart: it was not asked to restart
    recorded_ours: bool  # a run record of ours says we paused it and did not release it
    marked_ours: bool | None  # the node carries that run's mark; None when it could not be read (away)
    storage_settled: bool = True  # no repair runs, every virtual disk Healthy
    held_by: str = ""  # who paused it, as far as the cluster says (the mark of another run, or nobody's mark)
    build: str | None = None  # its OS build (10.0.build.UBR); None when it does not answer
    staged: bool = False  # setup's first phase finished on it: the next restart runs the offline phases


def position_of(facts: NodeFacts) -> Position:
    away = facts.state in (NodeState.Down, NodeState.Joining, NodeState.Unknown, None) or not facts.reachable
    if facts.recorded_ours:
        if away and facts.marked_ours is not False:
            return Position.OURS_AWAY
        if facts.marked_ours:
            if facts.state == NodeState.Paused:
                return Position.OURS_BACK if facts.on_target else Position.OURS_PAUSED
            if facts.state == NodeState.Up:  # released outside the record: treat it as any Up node
                return _up(facts)
    if not facts.reachable:
        return Position.UNREACHABLE
    if facts.state in (NodeState.Down, NodeState.Joining, NodeState.Unknown, None):
        return Position.DOWN
    if facts.state == NodeState.Paused:
        return Position.PAUSED_BY_OTHER
    return _up(facts)


def _up(facts: NodeFacts) -> Position:
    if not facts.on_target:
        return Position.STAGED if facts.staged else Position.FRESH
    return Position.DONE if facts.storage_settled else Position.RESYNCING


@dataclass(frozen=True)
class Decision:
    action: str  # run, skip, refuse
    steps: tuple[str, ...] = ()
    why: str = ""


SKIP = Decision("skip")
REFUSE = Decision("refuse")

DECISIONS: dict[tuple[Mode, Position], Decision] = {
    (Mode.UPGRADE, Position.FRESH): Decision("run", FULL, "upgrade"),
    (Mode.UPGRADE, Position.STAGED): Decision("run", FULL, "staged: setup's first phase is done; drain, restart"),
    (Mode.UPGRADE, Position.DONE): Decision("skip", why="already on the target build"),
    (Mode.UPGRADE, Position.RESYNCING): Decision("run", (START_VMS, WAIT_STORAGE),
                                                 "on the target; wait for its resync"),
    (Mode.UPGRADE, Position.OURS_PAUSED): Decision("run", CONTINUE_UPGRADE,
                                                   "paused by a run of ours: continue at its drain"),
    (Mode.UPGRADE, Position.OURS_BACK): Decision("run", AFTER_REBOOT, "ours, back on the target: finish it"),
    (Mode.UPGRADE, Position.OURS_AWAY): Decision("run", AFTER_REBOOT, "ours and away: wait for it to come back"),
    (Mode.RESTART, Position.FRESH): Decision("run", RESTART, "rolling restart"),
    (Mode.RESTART, Position.STAGED): Decision("refuse", why="staged for the feature update: a restart would install "
                                                           "it; finish its upgrade first"),
    (Mode.RESTART, Position.DONE): Decision("skip", why="not asked to restart"),
    (Mode.RESTART, Position.RESYNCING): Decision("skip", why="not asked to restart"),
    (Mode.RESTART, Position.OURS_PAUSED): Decision("run", CONTINUE_RESTART,
                                                   "paused by a run of ours: continue at its drain"),
    (Mode.RESTART, Position.OURS_BACK): Decision("run", CONTINUE_RESTART,
                                                 "paused by a run of ours: continue at its drain"),
    (Mode.RESTART, Position.OURS_AWAY): Decision("run", AFTER_REBOOT, "ours and away: wait for it to come back"),
}
for _mode in Mode:
    DECISIONS[(_mode, Position.PAUSED_BY_OTHER)] = Decision("refuse", why="paused by someone else")
    DECISIONS[(_mode, Position.DOWN)] = Decision("refuse", why="down, and not by a run of ours")
    DECISIONS[(_mode, Position.UNREACHABLE)] = Decision("refuse", why="not reachable: does not answer on WinRM")


def decide(mode: Mode, facts: NodeFacts) -> tuple[Position, Decision]:
    position = position_of(facts)
    return position, DECISIONS[(mode, position)]


def held_by(mark: dict[str, Any] | None) -> str:
    """Who paused a node, as far as the cluster says: the run named by an hci-upgrade mark, or nobody's mark."""
    if not mark:
        return "someone else (no hci-upgrade mark on it)"
    return f"hci-upgrade run {mark.get('PausedByRun')} ({mark.get('PausedBy')}, {mark.get('PausedAt')})"
