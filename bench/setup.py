"""The benchmark database: pgdispatch installed, roles, source tables, triggers, sinks."""

from __future__ import annotations

import psycopg

from bench.common import APP_ROLE, DRAIN_ROLE, STOPPED_ROLE, Ctx
from sa_pgdispatch.install import install, installed_version

#: Tables whose AFTER INSERT row trigger is ``pgdispatch.trigger('bench.effect_<name>')``.
PGDISPATCH_ROW_TABLES = ("row", "sust", "burst")

#: The command of the drain/throughput jobs (payload = a number).
DRAIN_COMMAND = "INSERT INTO bench.dsink (v) VALUES ($1::bigint)"
DRAIN_COMMAND_CAPTURE = "INSERT INTO bench.dsink (v) VALUES ($1::bigint) RETURNING v"

_SOURCE_TABLES = ("plain", "row", "stmt", "inline", "sust", "burst", "graphile", "procr", "pgd1")


def setup_database(ctx: Ctx, app_workers: int, cron: bool = True) -> str:
    """Install pgdispatch and the benchmark schema; start the app role's pg_cron workers.

    With ``cron=False`` the app role's workers are stopped (the caller runs its own).
    """
    with ctx.connect() as conn:
        if installed_version(conn) is None:
            with conn.transaction():
                install(conn, workers=0)
        conn.execute("SELECT pgdispatch.stop()")  # the superuser dispatches nothing here
        version = str(installed_version(conn))
        conn.execute("DROP SCHEMA IF EXISTS bench CASCADE")
        conn.execute("CREATE SCHEMA bench")
        for role in (APP_ROLE, DRAIN_ROLE, STOPPED_ROLE):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if not exists:
                conn.execute(f"CREATE ROLE {role} LOGIN")
            conn.execute("SELECT pgdispatch.grant_usage(%s)", (role,))
            conn.execute(f"GRANT USAGE ON SCHEMA bench TO {role}")
        _create_objects(conn)
        for role in (APP_ROLE, DRAIN_ROLE, STOPPED_ROLE):
            conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA bench TO {role}")
            conn.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA bench TO {role}")
    # Workers: the app role's run through pg_cron (production path); the others never
    # start on their own (stop() before their first dispatch).
    for role in (DRAIN_ROLE, STOPPED_ROLE):
        with ctx.connect(role) as conn:
            conn.execute("SELECT pgdispatch.stop()")
    with ctx.connect(APP_ROLE) as conn:
        if cron:
            conn.execute("SELECT pgdispatch.start(%s)", (app_workers,))
        else:
            conn.execute("SELECT pgdispatch.stop()")
            conn.execute(
                "UPDATE pgdispatch.worker SET workers = %s WHERE role = current_user",
                (app_workers,),
            )
    return version


def _create_objects(conn: psycopg.Connection[object]) -> None:
    conn.execute(
        "CREATE TABLE bench.sink (tbl text NOT NULL, id bigint NOT NULL, "
        "at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )
    conn.execute(
        "CREATE TABLE bench.dsink (v bigint NOT NULL, at timestamptz NOT NULL DEFAULT "
        "clock_timestamp())"
    )
    for name in _SOURCE_TABLES:
        # fired_at: clock_timestamp() when the row is built, just before its trigger fires
        conn.execute(
            f"CREATE TABLE bench.src_{name} (id bigserial PRIMARY KEY, v integer, "
            "fired_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
    # side effects: one INSERT into the sink per source row
    for name in (*PGDISPATCH_ROW_TABLES, "inline"):
        conn.execute(
            f"CREATE FUNCTION bench.effect_{name}(p jsonb) RETURNS void LANGUAGE sql AS "
            f"$$ INSERT INTO bench.sink (tbl, id) VALUES ('{name}', (p ->> 'id')::bigint) $$"
        )
    conn.execute(
        "CREATE FUNCTION bench.effect_stmt(p jsonb) RETURNS void LANGUAGE sql AS "
        "$$ INSERT INTO bench.sink (tbl, id) "
        "   SELECT 'stmt', (e ->> 'id')::bigint FROM jsonb_array_elements(p) e $$"
    )
    for name in PGDISPATCH_ROW_TABLES:
        conn.execute(
            f"CREATE TRIGGER dispatch AFTER INSERT ON bench.src_{name} FOR EACH ROW "
            f"EXECUTE FUNCTION pgdispatch.trigger('bench.effect_{name}')"
        )
    conn.execute(
        "CREATE TRIGGER dispatch AFTER INSERT ON bench.src_stmt "
        "REFERENCING NEW TABLE AS pgdispatch_new FOR EACH STATEMENT "
        "EXECUTE FUNCTION pgdispatch.trigger('bench.effect_stmt')"
    )
    # what users do without dispatch: the trigger runs the side effect itself
    conn.execute(
        "CREATE FUNCTION bench.inline_trg() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN PERFORM bench.effect_inline(to_jsonb(NEW)); RETURN NULL; END $$"
    )
    conn.execute(
        "CREATE TRIGGER inline_effect AFTER INSERT ON bench.src_inline FOR EACH ROW "
        "EXECUTE FUNCTION bench.inline_trg()"
    )
