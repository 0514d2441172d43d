"""Load: 8 clients insert into a dispatch-triggered table while two workers drain.

Each inserted row fires ``pgdispatch.trigger('app.side')``; the side effect inserts the
row's id into ``app.effects`` (no unique constraint: a double run would show). The
clients run for ``SA_PGDISPATCH_LOAD_SECONDS`` (default 15; 60 for a soak run) against
a server of this module's own, whose log must show no ERROR, FATAL or deadlock.
After the clients stop the queue must be empty within ``DRAIN_BOUND`` seconds.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
import pytest

CLIENTS = 8
SECONDS = float(os.environ.get("SA_PGDISPATCH_LOAD_SECONDS", "15"))
DRAIN_BOUND = 60.0

pytestmark = [pytest.mark.slow, pytest.mark.cron]


def test_concurrent_trigger_load_applies_every_side_effect_exactly_once(rel: Any) -> None:
    with rel.own_server() as server:
        role = rel.make_role(server, "app")
        with rel.connect(server) as su:
            su.execute(
                f"CREATE SCHEMA app AUTHORIZATION {role};"
                f"SET ROLE {role};"
                "CREATE TABLE app.events (id bigint PRIMARY KEY, body text);"
                "CREATE TABLE app.effects (id bigint NOT NULL, at timestamptz DEFAULT now());"
                "CREATE FUNCTION app.side(r jsonb) RETURNS void LANGUAGE sql AS"
                " $$ INSERT INTO app.effects (id) VALUES ((r->>'id')::bigint) $$;"
                "CREATE TRIGGER side AFTER INSERT ON app.events FOR EACH ROW"
                " EXECUTE FUNCTION pgdispatch.trigger('app.side');"
                "RESET ROLE"
            )
        with rel.connect(server, role) as conn:
            conn.execute("SELECT pgdispatch.stop()")
        log_offset = server.log_path.stat().st_size

        stop = threading.Event()
        inserted = [0] * CLIENTS
        failures: list[str] = []

        def client(k: int) -> None:
            try:
                with rel.connect(server, role) as conn:
                    n = 0
                    while not stop.is_set():
                        conn.execute(
                            "INSERT INTO app.events VALUES (%s, 'x')", (n * CLIENTS + k + 1,)
                        )
                        n += 1
                    inserted[k] = n
            except psycopg.Error as exc:  # pragma: no cover - reported below
                failures.append(f"client {k}: {exc}")

        workers = [
            rel.WorkerThread(
                server, role, f"CALL pgdispatch.work(slot => {slot}, drain => true)",
                reconnect=True,
            )
            for slot in (1, 2)
        ]
        for w in workers:
            w.start()
        clients = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(CLIENTS)]
        started = time.monotonic()
        for c in clients:
            c.start()
        time.sleep(SECONDS)
        stop.set()
        for c in clients:
            c.join(timeout=60)
        ran_for = time.monotonic() - started
        assert failures == []
        total = sum(inserted)
        with rel.connect(server) as su:
            backlog = rel.count(su, "SELECT count(*) FROM pgdispatch.job")
            drained_in = rel.wait_for(
                lambda: rel.count(su, "SELECT count(*) FROM pgdispatch.job") == 0,
                timeout=DRAIN_BOUND, interval=0.1, what="the queue to drain",
            )
        for w in workers:
            w.halt()
        for w in workers:
            w.join(timeout=30)
        with rel.connect(server) as su:
            events = su.execute("SELECT count(*), min(id), max(id) FROM app.events").fetchone()
            effects = su.execute(
                "SELECT count(*), count(DISTINCT id) FROM app.effects"
            ).fetchone()
            missing = rel.count(
                su, "SELECT count(*) FROM app.events e"
                " WHERE NOT EXISTS (SELECT 1 FROM app.effects f WHERE f.id = e.id)"
            )
            states = su.execute(
                "SELECT state, count(*) FROM pgdispatch.job_history GROUP BY state"
            ).fetchall()
        log = server.log_path.read_bytes()[log_offset:].decode("utf-8", "replace")

    assert events is not None
    assert effects is not None
    assert events[0] == total > 0
    assert effects == (total, total), "a side effect was lost or applied twice"
    assert missing == 0
    assert states == [("succeeded", total)]
    bad = [
        line for line in log.splitlines()
        if any(word in line for word in ("ERROR:", "FATAL:", "PANIC:", "deadlock"))
    ]
    assert bad == [], "\n".join(bad[:20])
    assert [e for w in workers for e in w.errors] == []
    print(
        f"{CLIENTS} clients, {ran_for:.1f}s: {total} inserts ({total / ran_for:.0f}/s), "
        f"backlog {backlog} when they stopped, queue empty {drained_in:.2f}s later"
    )
