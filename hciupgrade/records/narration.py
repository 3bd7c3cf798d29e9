"""A run's record events as the sentences an operator wants to read in the run's log ("draining hci-n3 (3 VMs)",
"setup exit code 0", "waiting for repair of Volume02: 43%", "resumed hci-n3 (failback Immediate)"). Pure: the
flow hands each line to Prefect's run logger."""

from __future__ import annotations

import logging
from typing import Any

from hciupgrade.upgrade import runbook

INFO, WARNING, ERROR = logging.INFO, logging.WARNING, logging.ERROR
QUIET_PHASES = runbook.QUIET  # steps whose start says nothing an operator acts on


def once(node: str | None, text: object) -> str:
    """The text without a leading "<node>: ", for a sentence that names the node itself (never "n1: n1: ...")."""
    text = str(text)
    return text[len(node) + 2:] if node and text.startswith(f"{node}: ") else text


def describe(event: dict[str, Any]) -> tuple[int, str] | None:
    """(level, sentence) for one record event, or None for an event not worth a line."""
    node, phase, status = event.get("node"), event.get("phase"), event.get("status")
    error = once(node, event["error"]) if event.get("error") else None
    if phase == "note":
        return INFO, str(event["detail"])
    if phase == "run":
        if status == "running":
            return INFO, f"run {event['run_id']} of {event['cluster']} started" + (
                " (dry run: nothing will change)" if event.get("dry_run") else "")
        level = INFO if status == "succeeded" else WARNING if status in ("stopped", "cancelled") else ERROR
        return level, f"run {event['run_id']} {status}" + (f": {error}" if error else "")
    if phase == "preflight":
        if status == "succeeded":
            return INFO, f"preflight ok: {event['check']}: {event['detail']}"
        return (ERROR if event.get("blocking") else WARNING), f"preflight: {event['check']}: {event['detail']}"
    if phase == "plan":
        positions = event.get("positions") or {}
        steps = ", ".join(f"{n} {a}" + (f" ({positions[n]})" if positions.get(n) else "")
                          for n, a in (event.get("actions") or {}).items())
        return INFO, f"plan, in this order: {steps}"
    if phase == "node":
        return _node(event)
    if phase == "lock" and status == "acquired":
        return INFO, f"holding the lock of {event['cluster']} (fence {event.get('fence')}): every change proves it"
    if phase == "check":  # a post-OS check: a warning is a warning, named with its detail
        level = INFO if status == "succeeded" else ERROR if event.get("blocking") else WARNING
        return level, f"check {event.get('check')}: {event.get('detail')}"
    if phase == "ownership":
        if status == "paused" and event.get("taken_over_from"):
            return INFO, (f"{node}: taken over from run {event['taken_over_from']}, which is dead: its mark is "
                          f"this run's now (fence {event.get('fence')})")
        if status == "paused":
            adopted = event.get("adopted_from")
            return INFO, (f"{node}: adopted from run {adopted}, continuing from its live state" if adopted else
                          f"{node}: pausing it under our mark (run {event.get('mark')})")
        return INFO, f"{node}: released" + (f" ({event['reason']})" if event.get("reason") else "")
    if phase == "stalled":
        return WARNING, (f"{node}: {event.get('step')} stalled: {event.get('minutes'):g} min so far, "
                         f"{event.get('why')}; waiting on to its timeout")
    if phase == "retry":
        return WARNING, f"{node}: attempt {event.get('attempt')} after: {error}"
    if phase == "warn-after":
        return WARNING, str(error)
    if phase == "approval":
        if status == "succeeded":
            return INFO, (f"approved by {event.get('approver')} ({event.get('source')}): {event.get('reason')}; "
                          f"steps {', '.join(event.get('steps') or [])}")
        return (INFO, f"waiting for an approval of: {', '.join(event.get('steps') or [])}") if status == "running" \
            else (WARNING, str(error))
    if phase == "azure-operation":  # the ledger: a submit, and the end its follow reached
        if status == "running":
            return (INFO, f"{event.get('kind')} submitted; following operation {event['status_url']}") \
                if event.get("status_url") else (INFO, f"submitting {event.get('kind')} of {event.get('key')}")
        return INFO, f"{event.get('kind')} followed to its end: {status}"
    if phase in LEVEL_CHANGES and status == "succeeded":  # what an irreversible step changed, from and to
        return INFO, f"{LEVEL_CHANGES[phase]}: {event.get('before')} -> {event.get('after')}"
    if phase and status == "failed":
        return ERROR, f"{node or 'cluster'}: {phase} failed: {error}"
    if phase and status == "succeeded" and event.get("result") is not None and phase == runbook.INSTALL:
        return INFO, f"{node}: installer exit code {event['result']}"
    if phase and status == "running" and phase not in QUIET_PHASES:
        return INFO, f"{node or 'cluster'}: {phase}"
    return None


LEVEL_CHANGES = {"functional-level": "cluster functional level raised",
                 "storage-pool": "storage pool version updated"}


def _node(event: dict[str, Any]) -> tuple[int, str] | None:
    node, status = event.get("node"), event.get("status")
    before, after = event.get("build_before"), event.get("build_after")
    if status == "running":
        return INFO, f"{node}: on {before or 'an unknown build'}, position {event.get('position')}: " \
                     f"{' > '.join(event.get('steps') or [])}"
    if status == "skipped":
        return INFO, f"{node}: skipped ({event.get('reason') or 'nothing to do'}), on {before}"
    if status == "succeeded":
        storage = "; its storage is not healthy yet" if event.get("storage_healthy") is False else ""
        return INFO, f"{node}: {event.get('result')}: {before} -> {after}{storage}"
    if status == "not-started":
        return WARNING, f"{node}: not started: {once(node, event.get('error'))}"
    if status == "failed":
        left = "; LEFT PAUSED OR DOWN" if event.get("left_paused") else ""
        return ERROR, f"{node}: failed after {event.get('attempts')} attempt(s): {once(node, event.get('error'))}{left}"
    return None
