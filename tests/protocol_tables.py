"""Protocol section 5, written out once for the tests, independently of fsm/.

operation -> state -> "yes" or the refusal code the collector answers with.
"""

from __future__ import annotations

SECTION_5: dict[str, dict[str, str]] = {
    "HealthCheck": {
        "unregistered": "yes",
        "registering": "yes",
        "ready": "yes",
        "draining": "yes",
        "deregistered": "SHUTTING_DOWN",
    },
    "UpdateConfig": {
        "unregistered": "INVALID_STATE",
        "registering": "INVALID_STATE",
        "ready": "yes",
        "draining": "SHUTTING_DOWN",
        "deregistered": "SHUTTING_DOWN",
    },
    "GracefulShutdown": {
        "unregistered": "yes",
        "registering": "yes",
        "ready": "yes",
        "draining": "SHUTTING_DOWN",
        "deregistered": "SHUTTING_DOWN",
    },
}
