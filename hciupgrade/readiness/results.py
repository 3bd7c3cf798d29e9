"""Environment checker result records, in every shape the real module produces (reference/domain.md §2.3, app. A):

- per-node records (older modules) and aggregated "AllNodes" records (current module);
- Status and Severity as names (FAILURE, CRITICAL; any case) or integers (plain ConvertTo-Json);
- Timestamp as ISO 8601, "/Date(ms)/" or "\\/Date(ms)\\/";
- AdditionalData and Tags as dictionaries of strings;
- files holding one record, a list, the report's {"Jobs": {...}} or an ECE exception's {"ErrorMessage": {"Results"}},
  with raw line breaks inside strings as the public troubleshooting guides show them.

A record that cannot be understood is returned as a Problem naming its source; nothing is dropped silently.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hciupgrade.psenums import ReadinessSeverity, ReadinessStatus

Status = ReadinessStatus
Severity = ReadinessSeverity

COLUMNS = ("name", "title", "status", "severity", "target", "target_type", "node", "aggregated", "timestamp",
           "description", "remediation", "detail", "source")


@dataclass(frozen=True)
class Problem:
    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


def _enum(kind: type[enum.IntEnum], value: Any) -> enum.IntEnum:
    if isinstance(value, bool):
        raise ValueError(f"{value!r}")
    if isinstance(value, int):
        return kind(value)
    text = str(value).strip().upper()
    if text.lstrip("-").isdigit():
        return kind(int(text))
    return kind[{"INFORMATION": "INFORMATIONAL", "INFO": "INFORMATIONAL"}.get(text, text)]


DATE_MS = re.compile(r"^\\?/Date\((-?\d+)([+-]\d{4})?\)\\?/$")


def _timestamp(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    text = str(value).strip()
    match = DATE_MS.match(text)
    if match:
        return datetime.fromtimestamp(int(match.group(1)) / 1000, tz=UTC)
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))  # .NET's 7 fractional digits
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _strings(value: Any, field: str) -> dict[str, str]:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{field} is not a dictionary")
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def normalise(raw: dict[str, Any], source: str, node: str | None = None) -> dict[str, Any]:
    """One record as a flat row (see COLUMNS). Raises ValueError naming the field that does not make sense."""
    if not isinstance(raw, dict) or "Name" not in raw:
        raise ValueError("not a result record (no Name)")
    try:
        status = _enum(Status, raw.get("Status"))
    except (KeyError, ValueError):
        raise ValueError(f"Status {raw.get('Status')!r} is not one of {', '.join(s.name for s in Status)}") from None
    try:
        severity = _enum(Severity, raw.get("Severity"))
    except (KeyError, ValueError):
        raise ValueError(f"Severity {raw.get('Severity')!r} is not one of "
                         f"{', '.join(s.name for s in Severity)}") from None
    try:
        timestamp = _timestamp(raw.get("Timestamp") or raw.get("TimeStamp"))
    except ValueError:
        raise ValueError(f"Timestamp {raw.get('Timestamp')!r} is neither ISO 8601 nor /Date(ms)/") from None
    data = _strings(raw.get("AdditionalData"), "AdditionalData")
    tags = _strings(raw.get("Tags"), "Tags")
    target = str(raw.get("TargetResourceName") or raw.get("TargetResourceID") or "")
    aggregated = tags.get("IsAggregated", data.get("IsAggregated", "")).lower() == "true" or target == "AllNodes"
    return {
        "name": str(raw["Name"]),
        "title": str(raw.get("Title") or raw.get("DisplayName") or raw["Name"]),
        "status": status.name,
        "severity": severity.name,
        "target": target,
        "target_type": str(raw.get("TargetResourceType") or ""),
        "node": node or data.get("Source") or target,
        "aggregated": aggregated,
        "timestamp": timestamp,
        "description": str(raw.get("Description") or ""),
        "remediation": str(raw.get("Remediation") or ""),
        "detail": data.get("Detail", ""),
        "source": source,
    }


def _string_mask(text: str) -> tuple[list[bool], bool]:
    """For each character of JSON text, whether it is read inside a string literal; and whether the text ends
    inside one. The one walk both the cut-short check and the tolerant parser need."""
    mask, in_string, escaped = [], False, False
    for ch in text:
        mask.append(in_string)
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
    return mask, in_string


def _ends_open(text: str) -> bool:
    """Whether JSON text ends inside a string, an object or an array (a file cut short)."""
    mask, open_string = _string_mask(text)
    depth = sum((ch in "[{") - (ch in "]}") for ch, inside in zip(text, mask, strict=True) if not inside)
    return open_string or depth > 0


def _tolerant_json(text: str) -> Any:
    """json.loads, accepting the raw line breaks and tabs inside strings that the TSGs' copies contain."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    escapes = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}
    mask, _ = _string_mask(text)
    return json.loads("".join(escapes.get(ch, ch) if inside else ch for ch, inside in zip(text, mask, strict=True)))


def _records_in(document: Any) -> list[Any]:
    """The result records inside any of the real containers."""
    if isinstance(document, list):
        return [r for item in document for r in _records_in(item)] if any(
            isinstance(i, dict) and "Name" not in i for i in document) else document
    if isinstance(document, dict):
        if "Name" in document and ("Status" in document or "Severity" in document):
            return [document]
        for key in ("Results", "results", "ErrorMessage", "Jobs"):
            if key in document:
                inner = document[key]
                if key == "Jobs" and isinstance(inner, dict):
                    return [r for job in inner.values() for r in _records_in(job)]
                return _records_in(inner)
        return [document]  # let normalise say why it is not a record
    return [document]


def read_file(path: str | Path) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Rows and problems from one saved results file (JSON; a file of JSON Lines works too)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        return [], [Problem(str(path), f"cannot be read: {e.strerror or e}")]
    start = len(text) - len(text.lstrip())
    if text.lstrip().startswith(("Exception", "Type ")) and "{" in text:  # an ECE exception as copied from a log
        start = text.index("{")
    offset = text[:start].count("\n")  # lines before what is parsed, so an error names the file's own line
    text = text[start:].strip()
    try:
        documents = [_tolerant_json(text)]
    except json.JSONDecodeError as whole:
        try:
            documents = [_tolerant_json(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:  # not JSON Lines either: the whole document's first error is the real one
            try:
                json.loads(text)
                e = whole
            except json.JSONDecodeError as plain:
                e = plain
            ending = "; the file ends inside a value: cut short?" if _ends_open(text) else ""
            return [], [Problem(str(path), f"not JSON (line {e.lineno + offset}, column {e.colno}: {e.msg})"
                                           f"{ending}")]
    return parse_records([r for d in documents for r in _records_in(d)], source=str(path))


def parse_records(records: list[Any], source: str, node: str | None = None,
                  ) -> tuple[list[dict[str, Any]], list[Problem]]:
    rows, problems = [], []
    for i, raw in enumerate(records):
        try:
            rows.append(normalise(raw, source, node))
        except ValueError as e:
            name = raw.get("Name") if isinstance(raw, dict) else None
            problems.append(Problem(f"{source} record {i}" + (f" ({name})" if name else ""), str(e)))
    return rows, problems
