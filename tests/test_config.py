"""Start-up settings: flags over PROCMOND_* over the TOML file over defaults, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from procmond.cli import main
from procmond.config import Settings, build_settings, load_toml
from procmond.errors import EXIT_BAD_CONFIG, StartupError
from procmond.schemas import CollectorConfig

NO_FLAGS: dict[str, object] = {}


def test_defaults_are_the_protocols() -> None:
    """With nothing given, the collector config is protocol section 6's defaults."""
    settings = build_settings(NO_FLAGS, NO_FLAGS)
    assert settings.collector == CollectorConfig()
    assert settings.collector.collection_interval_secs == 30
    assert settings.collector_id == "procmond"
    assert settings.redis_url is None


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    """A value given as a flag (or its variable) beats the TOML file's."""
    file = tmp_path / "procmond.toml"
    file.write_text(
        'collector_id = "from-file"\nheartbeat_interval_ms = 5000\n'
        "[collector]\ncollection_interval_secs = 10\nmax_processes = 7\n"
    )
    settings = build_settings(
        {"collector_id": "from-flag"}, {"collection_interval_secs": 2.0}, load_toml(file)
    )
    assert settings.collector_id == "from-flag"
    assert settings.heartbeat_interval_ms == 5000
    assert settings.collector.collection_interval_secs == 2.0
    assert settings.collector.max_processes == 7


@pytest.mark.parametrize(
    ("overrides", "collector", "file", "field"),
    [
        ({"collector_id": "Not Valid"}, {}, {}, "collector_id"),
        ({"redis_url": "http://x"}, {}, {}, "redis_url"),
        ({"log_level": "loud"}, {}, {}, "log_level"),
        ({}, {}, {"heartbeat_interval_ms": 5}, "heartbeat_interval_ms"),
        ({}, {}, {"heartbeat_interval_ms": "5000"}, "heartbeat_interval_ms"),
        ({}, {}, {"no_such_setting": 1}, "no_such_setting"),
        ({}, {"collection_interval_secs": 0.5}, {}, "collection_interval_secs"),
        ({}, {}, {"collector": {"max_processes": "10"}}, "max_processes"),
        ({}, {}, {"collector": {"nope": True}}, "nope"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_field(
    overrides: dict[str, object],
    collector: dict[str, object],
    file: dict[str, object],
    field: str,
) -> None:
    """Each bad setting stops start-up with exit 2 and a single line naming its field."""
    with pytest.raises(StartupError) as caught:
        build_settings(overrides, collector, file)
    assert caught.value.exit_code == EXIT_BAD_CONFIG
    message = str(caught.value)
    assert "\n" not in message
    assert f"invalid setting {field}:" in message


def test_unreadable_or_malformed_toml(tmp_path: Path) -> None:
    """A missing file and a file that is not TOML are start-up errors, not tracebacks."""
    with pytest.raises(StartupError, match="cannot read config file"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("collector_id = \n")
    with pytest.raises(StartupError, match="is not valid TOML"):
        load_toml(bad)


def test_cli_reads_the_environment_and_exits_2_on_a_bad_value(tmp_path: Path) -> None:
    """procmond run takes PROCMOND_* variables; a bad one exits 2 before anything starts."""
    result = CliRunner().invoke(
        main,
        ["run", "--data-dir", str(tmp_path)],
        env={"PROCMOND_INTERVAL": "0.1", "PROCMOND_REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert result.exit_code == EXIT_BAD_CONFIG
    assert "invalid setting collection_interval_secs" in result.output
    assert not any(tmp_path.iterdir())  # nothing was created


def test_settings_dataclass_defaults_match_the_bounds() -> None:
    """The defaults of Settings are themselves valid settings."""
    defaults = Settings()
    rebuilt = build_settings(
        {
            "heartbeat_interval_ms": defaults.heartbeat_interval_ms,
            "shutdown_timeout_ms": defaults.shutdown_timeout_ms,
            "stream_maxlen": defaults.stream_maxlen,
            "buffer_capacity": defaults.buffer_capacity,
            "wal_max_bytes": defaults.wal_max_bytes,
        },
        NO_FLAGS,
    )
    assert rebuilt.heartbeat_interval_ms == defaults.heartbeat_interval_ms
