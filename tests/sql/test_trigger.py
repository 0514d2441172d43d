"""pgdispatch.trigger(): row and statement level, options, errors, SECURITY DEFINER form."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, exc, text

from .conftest import drain, role_engine, rows, run


@pytest.fixture
def app(db: Engine, schema: str) -> Engine:
    run(db, f'CREATE TABLE "{schema}".profiles (id int PRIMARY KEY, name text)')
    run(db, f'CREATE TABLE "{schema}".seen (op text, payload jsonb, by_role name)')
    run(
        db,
        f"""CREATE FUNCTION "{schema}".side(r jsonb) RETURNS void LANGUAGE sql AS $$
              INSERT INTO "{schema}".seen VALUES (current_setting('app.op', true), r, current_user)
            $$""",
    )
    return db


def seen(db: Engine, schema: str) -> list[dict[str, object]]:
    return [
        dict(r)
        for r in rows(db, f'SELECT payload, by_role FROM "{schema}".seen ORDER BY payload::text')
    ]


def test_row_trigger_dispatches_new_and_old_rows(app: Engine, schema: str) -> None:
    run(
        app,
        f"""CREATE TRIGGER d AFTER INSERT OR UPDATE OR DELETE ON "{schema}".profiles
            FOR EACH ROW EXECUTE FUNCTION pgdispatch.trigger('{schema}.side')""",
    )
    run(app, f"INSERT INTO \"{schema}\".profiles VALUES (1, 'ann'), (2, 'bob')")
    run(app, f"UPDATE \"{schema}\".profiles SET name = 'ann2' WHERE id = 1")
    run(app, f'DELETE FROM "{schema}".profiles WHERE id = 2')
    assert run(app, f'SELECT count(*) FROM "{schema}".seen') == 0  # dispatched, not run
    drain(app)
    payloads = sorted((r["payload"]["id"], r["payload"]["name"]) for r in seen(app, schema))
    assert payloads == [(1, "ann"), (1, "ann2"), (2, "bob"), (2, "bob")]


def test_statement_trigger_dispatches_one_job_with_all_rows(app: Engine, schema: str) -> None:
    run(
        app,
        f"""CREATE TRIGGER d AFTER INSERT ON "{schema}".profiles
            REFERENCING NEW TABLE AS pgdispatch_new
            FOR EACH STATEMENT
            EXECUTE FUNCTION pgdispatch.trigger('{schema}.side', 'priority=3')""",
    )
    before = run(app, "SELECT count(*) FROM pgdispatch.jobs")
    run(app, f"INSERT INTO \"{schema}\".profiles SELECT g, 'n' || g FROM generate_series(1, 100) g")
    run(app, f'INSERT INTO "{schema}".profiles SELECT g FROM generate_series(1, 0) g')  # no row
    assert run(app, "SELECT count(*) FROM pgdispatch.jobs") == before + 1
    drain(app)
    (only,) = seen(app, schema)
    assert isinstance(only["payload"], list)
    assert sorted(r["id"] for r in only["payload"]) == list(range(1, 101))


def test_statement_trigger_without_transition_table_says_how(app: Engine, schema: str) -> None:
    run(
        app,
        f"""CREATE TRIGGER d AFTER INSERT ON "{schema}".profiles
            FOR EACH STATEMENT EXECUTE FUNCTION pgdispatch.trigger('{schema}.side')""",
    )
    with pytest.raises(exc.DBAPIError, match="pgdispatch_new"):
        run(app, f"INSERT INTO \"{schema}\".profiles VALUES (1, 'x')")


def test_options_are_applied(app: Engine, schema: str) -> None:
    run(
        app,
        f"""CREATE TRIGGER d AFTER INSERT ON "{schema}".profiles FOR EACH ROW
            EXECUTE FUNCTION pgdispatch.trigger('{schema}.side', 'delay=1 hour', 'priority=7',
                                                'max_attempts=4', 'timeout=30 seconds')""",
    )
    run(app, f"INSERT INTO \"{schema}\".profiles VALUES (1, 'x')")
    job = rows(app, "SELECT * FROM pgdispatch.jobs ORDER BY id DESC LIMIT 1")[0]
    assert job["priority"] == 7
    assert job["max_attempts"] == 4
    assert job["timeout"].total_seconds() == 30
    assert (job["run_at"] - job["created_at"]).total_seconds() == 3600
    assert job["command"] == f"SELECT {schema}.side($1)"
    assert run(app, "SELECT pgdispatch.cancel(:id)", id=job["id"]) is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("'{schema}.nope'", "does not exist"),
        ("'nope'", "does not exist"),
        ("'{schema}.side(); DROP TABLE x'", "not a valid identifier"),
        ("'{schema}.side', 'colour=red'", "unknown option"),
        ("'{schema}.side', 'priority'", "bad option"),
        ("'{schema}.side', 'priority=1', 'priority=2'", "bad option"),
        ("'{schema}.side', 'delay=soon'", "invalid input syntax"),
        ("'{schema}.side', 'delay=-1 second'", "bad options"),
        ("'{schema}.side', 'max_attempts=0'", "bad options"),
        ("'{schema}.side', 'timeout=0'", "bad options"),
    ],
)
def test_bad_trigger_arguments_fail_the_firing_statement(
    app: Engine, schema: str, args: str, message: str
) -> None:
    run(
        app,
        f"""CREATE TRIGGER d AFTER INSERT ON "{schema}".profiles FOR EACH ROW
            EXECUTE FUNCTION pgdispatch.trigger({args.format(schema=schema)})""",
    )
    with pytest.raises(exc.DBAPIError, match=message):
        run(app, f"INSERT INTO \"{schema}\".profiles VALUES (1, 'x')")
    assert run(app, f'SELECT count(*) FROM "{schema}".profiles') == 0


def test_a_procedure_is_refused_when_the_trigger_fires(app: Engine, schema: str) -> None:
    run(
        app,
        f"""CREATE PROCEDURE "{schema}".proc(r jsonb) LANGUAGE sql AS $$ SELECT 1 $$;
            CREATE TRIGGER d AFTER INSERT ON "{schema}".profiles FOR EACH ROW
            EXECUTE FUNCTION pgdispatch.trigger('{schema}.proc')""",
    )
    with pytest.raises(exc.DBAPIError, match="is a procedure") as info:
        run(app, f"INSERT INTO \"{schema}\".profiles VALUES (1, 'x')")
    assert info.value.orig.sqlstate == "42809"  # type: ignore[union-attr]
    assert run(app, f'SELECT count(*) FROM "{schema}".profiles') == 0


def test_truncate_trigger_dispatches_one_job_with_an_empty_array(app: Engine, schema: str) -> None:
    run(
        app,
        f"""CREATE TRIGGER d AFTER TRUNCATE ON "{schema}".profiles FOR EACH STATEMENT
            EXECUTE FUNCTION pgdispatch.trigger('{schema}.side', 'priority=2')""",
    )
    run(app, f"INSERT INTO \"{schema}\".profiles VALUES (1, 'x')")
    before = run(app, "SELECT count(*) FROM pgdispatch.jobs")
    run(app, f'TRUNCATE "{schema}".profiles')
    assert run(app, "SELECT count(*) FROM pgdispatch.jobs") == before + 1
    drain(app)
    assert seen(app, schema) == [{"payload": [], "by_role": run(app, "SELECT current_user")}]


def test_before_trigger_is_refused(app: Engine, schema: str) -> None:
    run(
        app,
        f"""CREATE TRIGGER d BEFORE INSERT ON "{schema}".profiles FOR EACH ROW
            EXECUTE FUNCTION pgdispatch.trigger('{schema}.side')""",
    )
    with pytest.raises(exc.DBAPIError, match="AFTER trigger"):
        run(app, f"INSERT INTO \"{schema}\".profiles VALUES (1, 'x')")


def test_definer_trigger_runs_the_job_as_the_function_owner(
    app: Engine,
    schema: str,
    pgdispatch_server,
    pgdispatch_role,  # type: ignore[no-untyped-def]
) -> None:
    owner = pgdispatch_role("owner")
    writer = pgdispatch_role("writer")
    run(app, f'ALTER SCHEMA "{schema}" OWNER TO "{owner}"')
    for obj in ("TABLE profiles", "TABLE seen", "FUNCTION side(jsonb)"):
        run(app, f'ALTER {obj.split()[0]} "{schema}".{obj.split()[1]} OWNER TO "{owner}"')
    owner_db = role_engine(pgdispatch_server, owner)
    writer_db = role_engine(pgdispatch_server, writer)
    try:
        run(owner_db, "SELECT pgdispatch.stop()")
        fn = run(owner_db, "SELECT pgdispatch.definer_trigger_function(:s)::text", s=schema)
        assert fn == f"{schema}.pgdispatch_definer_trigger()"
        run(
            owner_db,
            f"""CREATE TRIGGER d AFTER INSERT ON "{schema}".profiles FOR EACH ROW
                EXECUTE FUNCTION "{schema}".pgdispatch_definer_trigger('{schema}.side')""",
        )
        run(owner_db, f'GRANT USAGE ON SCHEMA "{schema}" TO "{writer}"')
        run(owner_db, f'GRANT INSERT ON "{schema}".profiles TO "{writer}"')
        # the writer may not use the definer function in triggers of its own
        assert run(app, "SELECT has_function_privilege(:r, :f, 'EXECUTE')", r=writer, f=fn) is False
        run(writer_db, f"INSERT INTO \"{schema}\".profiles VALUES (1, 'by writer')")
        drain(owner_db)
        (only,) = seen(app, schema)
        assert only["by_role"] == owner
        # another role cannot take over the schema's definer function
        with pytest.raises(exc.DBAPIError, match="belongs to"):
            run(writer_db, "SELECT pgdispatch.definer_trigger_function(:s)", s=schema)
    finally:
        owner_db.dispose()
        writer_db.dispose()


def test_row_triggers_of_several_functions_share_one_session(app: Engine, schema: str) -> None:
    # after the session's first row (the role's workers checked), rows take the hot
    # path: each gets its own trigger's command and the row of its own operation
    run(
        app,
        f"""CREATE FUNCTION "{schema}".other(r jsonb) RETURNS void LANGUAGE sql AS $$
              INSERT INTO "{schema}".seen VALUES ('other', r, current_user)
            $$;
            CREATE TABLE "{schema}".notes (id int PRIMARY KEY, body text);
            CREATE TRIGGER d AFTER INSERT OR DELETE ON "{schema}".profiles
              FOR EACH ROW EXECUTE FUNCTION pgdispatch.trigger('{schema}.side');
            CREATE TRIGGER d AFTER INSERT ON "{schema}".notes
              FOR EACH ROW EXECUTE FUNCTION pgdispatch.trigger('"{schema}"."other"')""",
    )
    with app.connect() as conn:  # one session, one transaction per statement
        for i in range(1, 4):
            conn.execute(text(f"INSERT INTO \"{schema}\".profiles VALUES ({i}, 'p{i}')"))
            conn.commit()
            conn.execute(text(f"INSERT INTO \"{schema}\".notes VALUES ({i}, 'n{i}')"))
            conn.commit()
        conn.execute(text(f'DELETE FROM "{schema}".profiles WHERE id = 2'))
        conn.commit()
    commands = rows(
        app,
        "SELECT command, payload FROM pgdispatch.jobs WHERE command LIKE :c ORDER BY id",
        c=f"SELECT %{schema}%",
    )
    side, other = f"SELECT {schema}.side($1)", f"SELECT {schema}.other($1)"
    assert [(r["command"], r["payload"]["id"]) for r in commands] == [
        (side, 1),
        (other, 1),
        (side, 2),
        (other, 2),
        (side, 3),
        (other, 3),
        (side, 2),
    ]
    assert [r["payload"].get("name") for r in commands if r["command"] == side] == [
        "p1",
        "p2",
        "p3",
        "p2",
    ]
