"""redact_cmdline: examples of each secret shape, non-secrets kept, and hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from procmond.collect import redact
from procmond.collect.redact import REDACTED, redact_cmdline

R = REDACTED


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["mysql", "--password", "x", "-u", "root"], ["mysql", "--password", R, "-u", "root"]),
        (["--password=x"], [f"--password={R}"]),
        (["--PASSWORD", "x"], ["--PASSWORD", R]),
        (["-password", "x"], ["-password", R]),
        (["--passwd", "x", "--pass", "y"], ["--passwd", R, "--pass", R]),
        (["--token", "x"], ["--token", R]),
        (["--secret=x"], [f"--secret={R}"]),
        (
            ["--api-key", "x", "--apikey", "y", "--api_key=z"],
            ["--api-key", R, "--apikey", R, f"--api_key={R}"],
        ),
        (["--access-key", "x", "--private-key", "y"], ["--access-key", R, "--private-key", R]),
        (
            ["--auth", "x", "--credential", "y", "--credentials=z"],
            ["--auth", R, "--credential", R, f"--credentials={R}"],
        ),
        (["--client-secret", "x"], ["--client-secret", R]),
        (["--db-password", "x"], ["--db-password", R]),
        (["--github-token=x"], [f"--github-token={R}"]),
        (["--dbPassword", "x"], ["--dbPassword", R]),
        (["-Djavax.net.ssl.keyStorePassword=x"], [f"-Djavax.net.ssl.keyStorePassword={R}"]),
        (["--password", "--token", "x"], ["--password", R, R]),
        (["PGPASSWORD=x", "psql"], [f"PGPASSWORD={R}", "psql"]),
        (["AWS_SECRET_ACCESS_KEY=x"], [f"AWS_SECRET_ACCESS_KEY={R}"]),
        (["API_TOKEN=x"], [f"API_TOKEN={R}"]),
        (["MYSQL_PWD=x"], [f"MYSQL_PWD={R}"]),
        (["--env=API_TOKEN=x"], [f"--env=API_TOKEN={R}"]),
        (["redis://user:pass@host:6379/0"], [f"redis://user:{R}@host:6379/0"]),
        (["redis://:p@ss@host"], [f"redis://:{R}@host"]),
        (["--url=postgres://u:pw@db/x"], [f"--url=postgres://u:{R}@db/x"]),
        (["https://h/p?access_token=x&a=1"], [f"https://h/p?access_token={R}&a=1"]),
        (["-H", "Authorization: Bearer abc"], ["-H", f"Authorization: {R}"]),
        (["sh", "-c", "psql --password x -h db"], ["sh", "-c", f"psql --password {R} -h db"]),
    ],
)
def test_secret_shapes_are_redacted(args: list[str], expected: list[str]) -> None:
    """Each documented secret shape has its value, and only its value, replaced."""
    assert redact_cmdline(args) == expected


@pytest.mark.parametrize(
    "args",
    [
        ["ls", "-la", "/tmp"],
        ["--bypass", "x"],
        ["--author", "me", "AUTHOR=me"],
        ["--token-file", "/run/secrets/t", "--password-stdin"],
        ["--compass", "north"],
        ["https://example.com/path?q=1"],
        ["redis://host:6379/0"],
        ["python", "-c", "x = 1; print(x)"],
        [],
        [""],
        ["--password"],
    ],
)
def test_non_secrets_are_kept(args: list[str]) -> None:
    """Arguments that name no secret come back unchanged."""
    assert redact_cmdline(args) == args


def test_input_is_not_mutated_and_tuples_are_accepted() -> None:
    """The function is pure: any sequence in, a new list out, input untouched."""
    args = ("--token", "x")
    assert redact_cmdline(args) == ["--token", R]
    assert args == ("--token", "x")


def test_public_names_are_complete() -> None:
    """__all__ lists exactly the public names of the module."""
    public = {n for n in vars(redact) if not n.startswith("_") and n not in {"annotations", "re"}}
    public -= {"Sequence", "Final"}
    assert set(redact.__all__) == public


# -- properties ----------------------------------------------------------------

ARG = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
ARGS = st.lists(ARG, max_size=12)
# A value we can search for afterwards: it cannot occur in filler by accident.
SECRETS = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789!%^*+~", min_size=4, max_size=16
).map(lambda s: f"ZQX{s}")
FLAGS = st.sampled_from(
    [
        "--password", "--passwd", "--pass", "--token", "--secret", "--api-key", "--apikey",
        "--api_key", "--access-key", "--private-key", "--auth", "--credential",
        "--credentials", "--client-secret", "--db-password", "--github-token",
        "-password", "--Password", "--DB_TOKEN", "--userPassword",
    ]
)  # fmt: skip
ENV_KEYS = st.sampled_from(
    ["PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "API_TOKEN", "GITHUB_TOKEN", "MYSQL_PWD", "db_password"]
)
SCHEMES = st.sampled_from(["redis", "rediss", "postgres", "https", "amqp"])
USERS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", max_size=8)


@st.composite
def secret_shape(draw: st.DrawFn) -> tuple[list[str], str]:
    """One secret in one of the documented shapes, with the secret value itself."""
    secret = draw(SECRETS)
    kind = draw(st.sampled_from(["flag", "flag=", "env", "url"]))
    if kind == "flag":
        return [draw(FLAGS), secret], secret
    if kind == "flag=":
        return [f"{draw(FLAGS)}={secret}"], secret
    if kind == "env":
        return [f"{draw(ENV_KEYS)}={secret}"], secret
    return [f"{draw(SCHEMES)}://{draw(USERS)}:{secret}@host:1/db"], secret


@st.composite
def cmdline_with_secrets(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """Random filler with secrets inserted between arguments (never inside another shape)."""
    chunks = [[arg] for arg in draw(ARGS)]
    secrets: list[str] = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        shape, secret = draw(secret_shape())
        chunks.insert(draw(st.integers(min_value=0, max_value=len(chunks))), shape)
        secrets.append(secret)
    return [arg for chunk in chunks for arg in chunk], secrets


@given(ARGS)
def test_output_has_the_same_length(args: list[str]) -> None:
    """Redaction never adds or removes arguments."""
    assert len(redact_cmdline(args)) == len(args)


# Arguments built from the pieces the patterns look for, so that near-misses
# and overlaps (flag-like values, '=' inside URLs, nested KEY=...) are common.
PIECES = st.sampled_from(
    ["-", "--", "=", ":", "//", "@", " ", "?", "&", "#", "[REDACTED]", "password", "Token",
     "PASS", "auth", "api-key", "db_", "redis://", "u", "x", "Authorization: ", "\n"]
)  # fmt: skip
TRICKY_ARGS = st.lists(st.lists(PIECES, max_size=6).map("".join), max_size=8)


@given(TRICKY_ARGS)
def test_redaction_is_idempotent_on_tricky_arguments(args: list[str]) -> None:
    """Idempotence and length hold where the patterns overlap and nearly match."""
    once = redact_cmdline(args)
    assert len(once) == len(args)
    assert redact_cmdline(once) == once


@given(ARGS)
def test_redaction_is_idempotent(args: list[str]) -> None:
    """Redacting a redacted command line changes nothing."""
    once = redact_cmdline(args)
    assert redact_cmdline(once) == once


@given(cmdline_with_secrets())
def test_secret_never_survives(case: tuple[list[str], list[str]]) -> None:
    """A secret value in any documented shape appears in no output argument."""
    args, secrets = case
    out = redact_cmdline(args)
    assert len(out) == len(args)
    for secret in secrets:
        assert not any(secret in arg for arg in out), (args, out)
    assert redact_cmdline(out) == out


@given(ARGS)
def test_unchanged_arguments_or_redaction_marker(args: list[str]) -> None:
    """Every output argument is its input or contains the redaction marker."""
    for before, after in zip(args, redact_cmdline(args), strict=True):
        assert after == before or REDACTED in after
