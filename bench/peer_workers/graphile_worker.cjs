// graphile-worker peer of the sa_pgdispatch benchmarks (bench/peers.py runs it).
//   node graphile_worker.cjs migrate   install graphile-worker's schema and exit
//   node graphile_worker.cjs           run one worker (concurrency 1) until SIGTERM
// The task does the same side effect as the pgdispatch jobs: one INSERT into bench.sink.
// graphile-worker itself is installed from npm into a cache dir found through NODE_PATH.
"use strict";
const { run, runMigrations, Logger } = require("graphile-worker");

const connectionString = process.env.BENCH_DSN;
const quiet = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`[graphile ${level}] ${message}`);
});

async function main() {
  if (process.argv[2] === "migrate") {
    await runMigrations({ connectionString, logger: quiet });
    return;
  }
  const runner = await run({
    connectionString,
    concurrency: 1,
    logger: quiet,
    taskList: {
      bench: async (payload, helpers) => {
        await helpers.query("INSERT INTO bench.sink (tbl, id) VALUES ('graphile', $1)", [payload.id]);
      },
    },
  });
  console.log("ready");
  await runner.promise;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
