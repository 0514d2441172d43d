"""procrastinate peer of the sa_pgdispatch benchmarks (bench/peers.py runs it).

Runs in a separate virtualenv that has procrastinate (never the project's venv):
    python procrastinate_worker.py schema   print procrastinate's schema SQL
    python procrastinate_worker.py          run one worker (concurrency 1) until SIGTERM
The task does the same side effect as the pgdispatch jobs: one INSERT into bench.sink.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import procrastinate
import psycopg

DSN = os.environ.get("BENCH_DSN", "")
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DSN))
_conn: list[psycopg.AsyncConnection[Any]] = []


@app.task(name="bench_task")
async def bench_task(id: int) -> None:
    await _conn[0].execute("INSERT INTO bench.sink (tbl, id) VALUES ('procrastinate', %s)", (id,))


async def main() -> None:
    _conn.append(await psycopg.AsyncConnection.connect(DSN, autocommit=True))
    async with app.open_async():
        print("ready", flush=True)
        await app.run_worker_async(concurrency=1, wait=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["schema"]:
        print(app.schema_manager.get_schema())
    else:
        asyncio.run(main())
