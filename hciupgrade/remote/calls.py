"""A PowerShell call is data: a cmdlet name and typed parameters, or a packaged script with bound parameters.

Nothing here builds PowerShell text. Values travel as typed CLIXML, so a node name like "n1'; Stop-Computer"
stays a string. A switch is the SWITCH marker, never None (pypsrp encodes None as a switch) nor True (a bool
parameter such as -IsPrimordial takes a real boolean).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

CMDLET_NAME = re.compile(r"^[A-Za-z]+-[A-Za-z]+$")
PARAM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"


class _Switch:
    def __repr__(self) -> str:
        return "SWITCH"


SWITCH = _Switch()
Scalar = Union[str, int, float, bool]
Value = Union[Scalar, list[Scalar], tuple[Scalar, ...], _Switch]


def _check_parameters(owner: str, parameters: dict[str, Value]) -> None:
    for name, value in parameters.items():
        if not PARAM_NAME.match(name):
            raise ValueError(f"{owner}: {name!r} is not a parameter name")
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if v is None or not isinstance(v, str | int | float | bool | _Switch):
                raise ValueError(f"{owner} -{name}: {type(v).__name__} is not a value a call may carry")


@dataclass(frozen=True)
class Cmdlet:
    name: str
    parameters: dict[str, Value] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not CMDLET_NAME.match(self.name):
            raise ValueError(f"{self.name!r} is not a cmdlet name (Verb-Noun)")
        _check_parameters(self.name, self.parameters)

    def __or__(self, other: Cmdlet) -> Pipeline:
        return Pipeline((self, other))

    def __str__(self) -> str:  # for logs: names and parameter names only
        return f"{self.name} {' '.join('-' + p for p in self.parameters)}".strip()


@dataclass(frozen=True)
class Pipeline:
    commands: tuple[Cmdlet, ...]

    def __or__(self, other: Cmdlet) -> Pipeline:
        return Pipeline((*self.commands, other))

    def __str__(self) -> str:
        return " | ".join(str(c) for c in self.commands)


@dataclass(frozen=True)
class PackagedScript:
    """A constant .ps1 shipped in hciupgrade/scripts with a param() block; only its parameters are bound."""

    filename: str
    parameters: dict[str, Value] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "/" in self.filename or "\\" in self.filename or not (SCRIPTS_DIR / self.filename).is_file():
            raise ValueError(f"{self.filename!r} is not a script packaged with hci-upgrade")
        _check_parameters(self.filename, self.parameters)

    @property
    def text(self) -> str:
        return (SCRIPTS_DIR / self.filename).read_text()

    def __str__(self) -> str:
        return f"{self.filename} {' '.join('-' + p for p in self.parameters)}".strip()


Call = Union[Cmdlet, Pipeline, PackagedScript]
