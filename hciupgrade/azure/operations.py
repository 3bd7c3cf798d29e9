"""Following Azure's work to its end: the operation a submit returned, then the resource's own view of it (an
update run, a deploymentSettings step tree) once that view has moved past what it showed before the submit.

Why both (reference/anchors.md 2.6): the operation says when Azure is done with the request; the resource says
what happened, and is what outlives the orchestrator. Neither is read before the other can answer: the update run
appears some time after the apply is accepted (until then the latest run is the previous one, perhaps a failed
one), and deploymentSettings' reportedProperties are written by the cluster later (until then they show the
previous Deploy's status). A follow therefore never takes a view that has not moved for the answer.

Every follow has a deadline and a stall rule: a tree whose steps do not change for longer than the stall budget
ends the follow as *stalled*, naming the step in progress. Stalled is not failed: Azure may still be working, so a
rerun follows the operation again and never submits a second one.

The ledger: each submit is recorded (its operation URL and what the view showed before it) before it is followed,
and its end when it is followed to it. A rerun finds an operation recorded and not ended, and follows it instead
of submitting again, even while Azure's view still shows what was there before."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from hciupgrade.azure.arm import ArmClient, ArmError, Operation, OperationFailed, OperationRead
from hciupgrade.azure.resources import Step

log = logging.getLogger(__name__)
V = TypeVar("V")

# Status words are free strings: ARM's (Succeeded/Failed/Canceled) and ECE's (Success/Error/InProgress/Skipped,
# deploymentSettings.json's GetDeploymentSettings example); updateRuns' state adds Unknown, which is not an end.
SUCCEEDED = {"succeeded", "success", "completed"}
FAILED = {"failed", "error", "canceled", "cancelled"}


def verdict(word: str | None) -> str:
    """'succeeded', 'failed' or 'running' (anything else: Unknown, InProgress, a word the service adds)."""
    key = (word or "").strip().lower()
    return "succeeded" if key in SUCCEEDED else ("failed" if key in FAILED else "running")


class Stalled(ArmError):
    """A follow that saw no change for longer than its budget: Azure may still be working (not a failure)."""


class FollowDeadline(ArmError):
    """A follow that did not end within its deadline."""


@dataclass
class View(Generic[V]):
    """What the resource shows: its value, a verdict, a fingerprint that changes when anything in it changes,
    and the step in progress (for a stall's message)."""

    value: V
    verdict: str
    fingerprint: Any
    in_progress: str | None = None


@dataclass(frozen=True)
class Budget:
    """How long a follow may take and how long its view may stand still (cluster seconds), and how often the
    resource is read once the operation has ended."""

    deadline_s: float = 24 * 3600
    stall_s: float = 3 * 3600
    poll_s: float = 60.0
    appear_s: float = 1800.0  # after the operation ended, how long the view may take to move


def tree_fingerprint(root: Step) -> str:
    """Changes when any step starts, ends or changes status (a string: the ledger stores it as it is)."""
    return json.dumps([[path, step.status, step.start_time_utc, step.end_time_utc,
                        (step.model_extra or {}).get("lastUpdatedTimeUtc")] for _, path, step in root.walk()])


def in_progress(root: Step) -> str | None:
    """The deepest step in progress, by its path."""
    found = None
    for _, path, step in root.walk():
        if verdict(step.status) == "running" and step.status:
            found = path
    return found


def follow(arm: ArmClient, op: Operation | None, read_view: Callable[[], View[V] | None], *, budget: Budget,
           what: str, on_view: Callable[[V], None] | None = None) -> View[V]:
    """Follow `op` (None: nothing was submitted, the view alone) and the view to their ends. `read_view`
    returns None while the view has not moved past what it showed before the submit. Returns the view's end;
    raises OperationFailed when the operation failed and the view never moved, Stalled, FollowDeadline."""
    start = arm.now()
    op_done = op is None
    op_failed: str | None = None
    op_ended_at = start
    last_fingerprint: Any = None
    last_change = start
    if op is not None:
        arm.sleep(op.retry_after)  # the first read waits what the submit's answer asked for
    while True:
        wait = budget.poll_s
        if not op_done:
            assert op is not None
            try:
                read = arm.read_operation(op)
            except ArmError as e:
                if e.status != 404:
                    raise
                # past its grace and still unknown (an operation id ARM no longer keeps): the resource decides
                log.warning("%s: the operation is unknown to ARM (%s): following the resource alone", what, e)
                read = OperationRead("succeeded", {}, budget.poll_s)
            wait = read.wait
            if read.state in ("succeeded", "failed"):
                op_done, op_ended_at = True, arm.now()
                if read.state == "failed":
                    error = read.document.get("error") or {}
                    op_failed = (f"{what}: the operation ended {read.document.get('status')}: "
                                 f"{error.get('code', '')} {error.get('message', '')}").strip()
            elif read.state == "unread":
                log.info("%s: the operation's status could not be read (%s): reading again", what, read.note)
        view = read_view()
        if view is not None:
            if on_view is not None:
                on_view(view.value)
            if view.fingerprint != last_fingerprint:
                last_fingerprint, last_change = view.fingerprint, arm.now()
            if view.verdict != "running" and op_done:
                return view
            if arm.now() - last_change > budget.stall_s:
                raise Stalled(f"{what}: stalled: {view.in_progress or 'the run'} has not changed for "
                              f"{(arm.now() - last_change) / 60:.0f} min; Azure may still be working, so a rerun "
                              "follows it (nothing is submitted again)")
        elif op_done:
            if op_failed:  # the operation failed before the resource showed anything of it
                raise OperationFailed(op_failed, correlation_id=arm.correlation_id)
            if arm.now() - op_ended_at > budget.appear_s:
                raise FollowDeadline(f"{what}: the operation ended but the resource shows nothing of it after "
                                     f"{budget.appear_s / 60:.0f} min")
        if arm.now() - start > budget.deadline_s:
            raise FollowDeadline(f"{what}: not ended after {budget.deadline_s / 3600:.1f} h; Azure may still be "
                                 "working, so a rerun follows it")
        arm.sleep(wait if not op_done else budget.poll_s)


class Ledger:
    """Submits recorded in the run records (phase `azure-operation`): what a rerun follows instead of
    submitting again. `recorder` is a RunRecorder; None keeps nothing (a library caller)."""

    def __init__(self, recorder: Any | None) -> None:
        self.recorder = recorder

    def pending(self, kind: str, key: str) -> dict[str, Any] | None:
        """The latest submit of `kind` on `key` not followed to its end, by any run of this cluster."""
        if self.recorder is None:
            return None
        events = self.recorder.store.events(cluster=self.recorder.cluster, phases=["azure-operation"])
        mine = [e for e in events if e.get("kind") == kind and e.get("key") == key]
        return mine[-1] if mine and mine[-1]["status"] == "running" else None

    def submitting(self, kind: str, key: str, before: Any) -> None:
        """Before the request: a crash between the submit and its record still leaves a trace to follow."""
        if self.recorder is not None:
            self.recorder.emit(None, "azure-operation", "running", kind=kind, key=key, before=before)

    def submitted(self, kind: str, key: str, op: Operation, before: Any) -> None:
        if self.recorder is not None:
            self.recorder.emit(None, "azure-operation", "running", kind=kind, key=key, status_url=op.status_url,
                               location_url=op.location_url, resource_url=op.resource_url, before=before)

    def ended(self, kind: str, key: str, outcome: str, error: str | None = None) -> None:
        if self.recorder is not None:
            self.recorder.emit(None, "azure-operation", outcome, kind=kind, key=key, error=error)


def recorded_operation(entry: dict[str, Any], arm: ArmClient) -> Operation | None:
    """The operation of a ledger entry, to follow again (None: its answer was never recorded, the view alone
    tells whether Azure took it)."""
    if not entry.get("resource_url"):
        return None
    return Operation(entry.get("status_url"), entry.get("location_url"), entry["resource_url"], 10.0, arm.now())
