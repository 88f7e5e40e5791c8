"""The collector configuration (protocol section 6, UpdateConfig) and its rules.

One model, :class:`CollectorConfig`, whose rules UpdateConfig, the CLI, the
environment and the TOML file all share; :func:`apply_config_changes` applies
an update whole or not at all and says what is wrong with it.

Errors::

    ConfigValidationError    an UpdateConfig (or start-up setting) is wrong;
                             carries [{field, message}] for VALIDATION_FAILED
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import Field, ValidationError

from procmond.schemas.wire import Strict

__all__ = [
    "CONFIG_FIELDS",
    "CollectorConfig",
    "ConfigValidationError",
    "FieldError",
    "apply_config_changes",
    "changed_fields",
]


class CollectorConfig(Strict):
    """The runtime-changeable configuration; defaults are the protocol's."""

    collection_interval_secs: Annotated[float, Field(ge=1, le=3600)] = 30.0
    max_events_in_flight: Annotated[int, Field(ge=1, le=100_000)] = 1000
    collect_enhanced_metadata: bool = True
    compute_executable_hashes: bool = False
    max_processes: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    #: Protocol section 9 (v2): listen to the kernel's process events; false: cycles alone.
    kernel_events: bool = True


CONFIG_FIELDS: Final = tuple(CollectorConfig.model_fields)


@dataclass(frozen=True)
class FieldError:
    """One entry of ``context.errors`` of ``VALIDATION_FAILED``."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """The wire form."""
        return {"field": self.field, "message": self.message}


class ConfigValidationError(ValueError):
    """A config update (or start-up setting) breaks the rules; nothing changed."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


def _field_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in err["loc"]) or "changes"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = f"unknown setting (known: {', '.join(CONFIG_FIELDS)})"
        errors.append(FieldError(loc, message))
    return errors


def apply_config_changes(current: CollectorConfig, changes: Mapping[str, Any]) -> CollectorConfig:
    """``current`` with ``changes`` applied, whole or not at all.

    Raises :class:`ConfigValidationError` for an empty update, unknown keys,
    wrong JSON types (no string-to-number coercion) and out-of-range values.
    """
    if not changes:
        raise ConfigValidationError([FieldError("changes", "no changes given")])
    merged = {**current.model_dump(), **changes}
    try:
        return CollectorConfig.model_validate(merged, strict=True)
    except ValidationError as exc:
        raise ConfigValidationError(_field_errors(exc)) from exc


def changed_fields(old: CollectorConfig, new: CollectorConfig) -> list[str]:
    """Names of the fields whose value differs, in declaration order."""
    return [name for name in CONFIG_FIELDS if getattr(old, name) != getattr(new, name)]
