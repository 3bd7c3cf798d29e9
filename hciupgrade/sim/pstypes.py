"""Turn the simulator's plain outputs into psrpcore objects: real .NET type names, enums, error records."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from functools import cache
from typing import Any

from psrpcore.types import (
    CommandOrigin,
    ErrorCategory,
    ErrorCategoryInfo,
    ErrorRecord,
    InvocationInfo,
    NETException,
    PSEnumBase,
    PSFlagBase,
    PSInt,
    PSInt64,
    PSNoteProperty,
    PSObject,
    PSString,
    PSType,
)
from psrpcore.types._enum import PSEnumMeta

from hciupgrade.psenums import TYPE_NAMES
from hciupgrade.sim.cmdlets import ErrorOut, Out


@cache
def ps_enum_class(py_enum: type[enum.IntEnum]) -> type:
    """A psrpcore enum class mirroring a psenums enum, with the .NET type name of TYPE_NAMES."""
    base = PSFlagBase if issubclass(py_enum, enum.IntFlag) else PSEnumBase
    namespace = PSEnumMeta.__prepare__(py_enum.__name__, (base,))
    for member in py_enum:
        namespace[member.name] = member.value
    cls = PSEnumMeta(py_enum.__name__, (base,), namespace)
    return PSType([TYPE_NAMES[py_enum]])(cls)


def to_ps(value: Any, forms: Mapping[str, str] | None = None) -> Any:
    """A plain simulator value as psrpcore would serialise it. `forms` (Knobs.enum_forms) says per enum type
    whether it travels as a .NET enum object, a plain string or a bare integer, as a real node sends each."""
    if isinstance(value, enum.IntEnum | enum.IntFlag) and type(value) in TYPE_NAMES:
        form = (forms or {}).get(type(value).__name__, "enum")
        if form == "string":
            return PSString(enum_text(value))
        if form == "integer":
            return PSInt(int(value))
        ps_value = ps_enum_class(type(value))(int(value))
        ps_value.PSObject.to_string = enum_text(value)
        return ps_value
    if isinstance(value, Out):
        return to_psobject(value, forms)
    if isinstance(value, list | tuple):
        return [to_ps(v, forms) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return PSInt(value) if -(2**31) <= value < 2**31 else PSInt64(value)
    if isinstance(value, str):
        return PSString(value)
    return value


def enum_text(value: enum.IntEnum | enum.IntFlag) -> str:
    """What .NET's Enum.ToString() prints: the name, or the flag names joined by ", "."""
    if isinstance(value, enum.IntFlag) and value.value:
        return ", ".join(m.name for m in type(value) if m.value and m in value)
    return value.name or str(int(value))


def to_psobject(out: Out, forms: Mapping[str, str] | None = None) -> PSObject:
    obj = PSObject()
    obj.PSObject.type_names = list(out.type_names)
    for name, value in out.props.items():
        obj.PSObject.adapted_properties.append(PSNoteProperty(name, to_ps(value, forms)))
    for name, value in out.extended.items():
        obj.PSObject.extended_properties.append(PSNoteProperty(name, to_ps(value, forms)))
    if out.to_string is not None:
        obj.PSObject.to_string = out.to_string
    return obj


# Base types of the exceptions the simulator raises, most derived first (System.Exception and System.Object
# follow), so that the type chain on the wire reads like a real node's.
EXCEPTION_BASES = {
    "System.Management.Automation.ItemNotFoundException": (
        "System.Management.Automation.SessionStateException", "System.Management.Automation.RuntimeException",
        "System.SystemException"),
    "System.Management.Automation.ParameterBindingException": (
        "System.Management.Automation.RuntimeException", "System.SystemException"),
    "System.Management.Automation.CommandNotFoundException": (
        "System.Management.Automation.RuntimeException", "System.SystemException"),
    "System.Management.Automation.PSArgumentException": ("System.ArgumentException", "System.SystemException"),
    "Microsoft.PowerShell.Cmdletization.Cim.CimJobException": ("System.SystemException",),
    "Microsoft.PowerShell.Commands.ServiceCommandException": ("System.SystemException",),
    "Microsoft.FailoverClusters.PowerShell.ClusterCmdletException": (),
    "System.InvalidOperationException": ("System.SystemException",),
    "System.IO.IOException": ("System.SystemException",),
}


def error_record(error: ErrorOut) -> ErrorRecord:
    """A terminating error's record, with the fields a real node fills in (compare
    tests/data/pypsrp_error_failed_pipeline_state.xml, recorded from Windows)."""
    return ErrorRecord(
        Exception=exception_of(error),
        CategoryInfo=category_info(error),
        TargetObject=error.target,
        FullyQualifiedErrorId=error.fq_error_id,
        InvocationInfo=invocation_info(error),
        ScriptStackTrace="at <ScriptBlock>, <No file>: line 1",
    )


def category_info(error: ErrorOut) -> ErrorCategoryInfo:
    category = getattr(ErrorCategory, error.category, ErrorCategory.NotSpecified)
    return CategoryInfo(Category=category, Activity=error.activity or "",
                        Reason=error.exception_type.rsplit(".", 1)[-1], TargetName=error.target or "",
                        TargetType="String" if error.target else "")


class CategoryInfo(ErrorCategoryInfo):
    """psrpcore's ErrorCategoryInfo, with the message .NET's GetMessage() gives (psrpcore drops the colon):
    "NotSpecified: (:) [Write-Error], WriteErrorException", as in the recorded real record."""

    def __str__(self) -> str:
        return (f"{self.Category.name}: ({self.TargetName or ''}:{self.TargetType or ''}) [{self.Activity or ''}], "
                f"{self.Reason or ''}")


def exception_of(error: ErrorOut) -> NETException:
    exception = NETException(Message=error.message, HResult=error.hresult)
    bases = EXCEPTION_BASES.get(error.exception_type, ("System.SystemException",))
    exception.PSObject.type_names = [error.exception_type, *bases, "System.Exception", "System.Object"]
    exception.PSObject.to_string = f"{error.exception_type}: {error.message}"
    return exception


def invocation_info(error: ErrorOut) -> InvocationInfo:
    command = error.activity or ""
    info = InvocationInfo(
        MyCommand=command, BoundParameters={}, UnboundArguments=[], ScriptLineNumber=1, OffsetInLine=1,
        HistoryId=1, ScriptName="", Line=command, PositionMessage=f"At line:1 char:1\r\n+ {command}",
        PSScriptRoot="", PSCommandPath=None, InvocationName=command, PipelineLength=1, PipelinePosition=1,
        ExpectingInput=False, CommandOrigin=CommandOrigin.Runspace, DisplayScriptPosition=None)
    info.PSObject.to_string = "System.Management.Automation.InvocationInfo"
    return info


def normalise_param(value: Any) -> Any:
    """psrpcore hands parameters over as PSString/PSInt/PSList subclasses: make them plain Python."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, list | tuple):
        return [normalise_param(v) for v in value]
    if isinstance(value, dict):
        return {normalise_param(k): normalise_param(v) for k, v in value.items()}
    return str(value)
