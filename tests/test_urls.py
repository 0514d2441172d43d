"""One rule for database URLs (sa_pgdispatch.urls), shared by the CLI and the Alembic
template's env.py helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.config import Config
from alembic.util import CommandError

from sa_pgdispatch import cli
from sa_pgdispatch.alembic.template import database_url, init_project
from sa_pgdispatch.errors import PgDispatchError
from sa_pgdispatch.urls import UrlError, normalize_url


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://u:p@h:5433/d",
        "postgres://u:p@h:5433/d",  # the Heroku / Supabase spelling
        "postgresql+psycopg://u:p@h:5433/d",
        "postgres+psycopg://u:p@h:5433/d",
        "postgresql+psycopg_async://u:p@h:5433/d",  # psycopg 3 too
    ],
)
def test_accepted_spellings_become_psycopg(raw: str) -> None:
    url = normalize_url(raw)
    assert url.render_as_string(hide_password=False) == "postgresql+psycopg://u:p@h:5433/d"


def test_query_and_socket_urls_are_kept() -> None:
    url = normalize_url("postgres://u@/d?host=/tmp&sslmode=disable")
    assert url.drivername == "postgresql+psycopg"
    assert url.query == {"host": "/tmp", "sslmode": "disable"}


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("postgresql+psycopg2://u:secret@h/d", ["psycopg2", "psycopg 3",
                                                "postgresql+psycopg://u:***@h/d"]),
        ("postgres+psycopg2://u:secret@h/d", ["psycopg2", "psycopg 3",
                                              "postgresql+psycopg://u:***@h/d"]),
        ("postgresql+asyncpg://u:secret@h/d", ["asyncpg", "psycopg 3",
                                               "postgresql+psycopg://u:***@h/d"]),
        ("postgresql+pg8000://u@h/d", ["pg8000", "psycopg 3"]),
        ("mysql+pymysql://u:secret@h/d", ["mysql", "need PostgreSQL",
                                          "postgresql://user:password@host/dbname"]),
        ("sqlite:///x.db", ["sqlite", "need PostgreSQL"]),
    ],
)
def test_refused_with_what_is_needed_and_how_to_write_it(raw: str, words: list[str]) -> None:
    with pytest.raises(UrlError) as info:
        normalize_url(raw)
    message = str(info.value)
    for word in words:
        assert word in message
    assert "secret" not in message
    assert "not postgres'" not in message
    assert isinstance(info.value, PgDispatchError)
    assert isinstance(info.value, ValueError)


def test_invalid_url() -> None:
    with pytest.raises(UrlError, match="invalid database URL"):
        normalize_url("not a url")


@pytest.mark.parametrize(
    "raw",
    ["postgresql+psycopg2://u:secret@h/d", "postgres+psycopg2://u@h/d", "mysql://u@h/d",
     "postgresql+asyncpg://u@h/d"],
)
def test_cli_and_template_refuse_with_the_same_message(tmp_path: Path, raw: str) -> None:
    ini = tmp_path / "alembic.ini"
    ini.write_text("[alembic]\nscript_location = migrations\n")
    with pytest.raises(UrlError) as rule:
        normalize_url(raw)
    with pytest.raises(cli.UsageError) as from_cli:
        cli.resolve_url(raw, {})
    with pytest.raises(CommandError) as from_template:
        database_url(Config(str(ini)), environ={"DATABASE_URL": raw})
    with pytest.raises(CommandError) as from_init:
        init_project(tmp_path / "migrations", url=raw, config_file=tmp_path / "other.ini")
    message = str(rule.value)
    assert str(from_cli.value) == message
    assert message in str(from_template.value)
    assert "$DATABASE_URL" in str(from_template.value)  # which URL it was
    assert message in str(from_init.value)


@pytest.mark.parametrize("raw", ["postgres://u@h/d", "postgresql://u@h/d"])
def test_cli_and_template_accept_the_same_urls(tmp_path: Path, raw: str) -> None:
    ini = tmp_path / "alembic.ini"
    ini.write_text("[alembic]\nscript_location = migrations\n")
    assert cli.resolve_url(raw, {}) == "postgresql+psycopg://u@h/d"
    got = database_url(Config(str(ini)), environ={"DATABASE_URL": raw})
    assert got.render_as_string(hide_password=False) == "postgresql+psycopg://u@h/d"
