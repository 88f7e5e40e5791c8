"""Shared test configuration: hypothesis profiles and common fixtures."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# CI: derandomized and bounded so a run is repeatable and its time is known.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# Local development: random, a little lighter.
settings.register_profile("dev", max_examples=100, deadline=None)
# Soak: many more examples, for `make soak`.
settings.register_profile("soak", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Private redis-server fixtures (redis_server, fresh_redis, persistent_redis).
from redis_fixtures import fresh_redis, persistent_redis, redis_server  # noqa: E402

__all__ = ["fresh_redis", "persistent_redis", "redis_server"]
