"""Finding the Redis a local ``procmond run`` uses, for the operator tools.

``--redis-url`` / ``PROCMOND_REDIS_URL`` always win. Without them, the tools
look for the URL file that an embedded Redis writes into the data directory
(``<data dir>/redis/redis.url``) and use it only while its socket exists.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from procmond.config import default_data_dir

NO_REDIS_MESSAGE = "no Redis found: pass --redis-url or start `procmond run`"


def discover_redis_url(data_dir: Path | None) -> str | None:
    """The embedded Redis URL of the data directory, or None when there is none running."""
    directory = (data_dir or default_data_dir()) / "redis"
    try:
        url = (directory / "redis.url").read_text().strip()
    except OSError:
        return None
    if url.startswith("unix://"):
        socket_path = url.removeprefix("unix://").split("?", 1)[0]
        if not Path(socket_path).exists():
            return None
    return url or None


def display_url(url: str) -> str:
    """``url`` with its password masked, for logs and the start-up line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
