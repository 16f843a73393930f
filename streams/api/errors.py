"""Aodh's error bodies, status codes and messages.

Aodh (pecan + WSME behind ``ParsableErrorMiddleware``) answers every error as::

    {"error_message": {"faultcode": "Client", "faultstring": "...", "debuginfo": null}}

with ``faultcode`` ``Server`` for 5xx. python-aodhclient reads
``error_message.faultstring`` into its exception's message, so the messages
below follow Aodh's and WSME's wording (``aodh/api/controllers/v2/base.py``,
``wsme/exc.py``), with a reason added where this service differs.
"""

from __future__ import annotations

from typing import Any


class AodhError(Exception):
    """An API error: HTTP ``status`` with ``faultstring`` in Aodh's body."""

    def __init__(self, faultstring: str, status: int = 400) -> None:
        super().__init__(faultstring)
        self.faultstring = faultstring
        self.status = status

    def body(self) -> dict[str, Any]:
        """``{"error_message": {"faultcode", "faultstring", "debuginfo"}}``."""
        return {"error_message": {"faultcode": "Server" if self.status >= 500 else "Client",
                                  "faultstring": self.faultstring, "debuginfo": None}}


def invalid_input(field: str, value: Any, msg: str = "") -> AodhError:
    """WSME's InvalidInput: ``Invalid input for field/attribute F. Value: 'V'. MSG`` (400)."""
    return AodhError(f"Invalid input for field/attribute {field}. Value: '{value}'. {msg}")


def mandatory(field: str) -> AodhError:
    return invalid_input(field, None, "Mandatory field missing.")


def wrong_type(field: str, value: Any, expected: type) -> AodhError:
    return invalid_input(field, value, f"Wrong type. Expected '{expected}', got '{type(value)}'")


def unknown_attribute(argument: str, names: list[str]) -> AodhError:
    """WSME's UnknownAttribute (400)."""
    return AodhError(f"Unknown attribute for argument {argument}: {', '.join(sorted(names))}")


def alarm_not_found(alarm_id: str) -> AodhError:
    """``Alarm X not found`` (404), also for an alarm of another project (Aodh hides it)."""
    return AodhError(f"Alarm {alarm_id} not found", 404)


def project_not_authorized(value: Any, aspect: str = "project") -> AodhError:
    """``Not Authorized to access project X`` (401)."""
    return AodhError(f"Not Authorized to access {aspect} {value}", 401)


def rbac_failed() -> AodhError:
    """A policy check failed (403), e.g. a non-admin asking for all projects."""
    return AodhError("RBAC Authorization Failed", 403)


def unavailable(what: str, exc: BaseException) -> AodhError:
    """A store this service needs did not answer (503): nothing was changed unless the message says so."""
    return AodhError(f"{what} unavailable: {type(exc).__name__}: {exc}", 503)
