-- pgdispatch 0.1.0: asynchronous SQL side effects inside PostgreSQL, driven by pg_cron.
--
-- Plain SQL and PL/pgSQL only (TLE-compliant): no C, no file access, no superuser at
-- run time. Installed by sa_pgdispatch.install() or with psql:
--   psql -v ON_ERROR_STOP=1 -1 -f sql/pgdispatch--0.1.0.sql
-- in the database named by cron.database_name (the only one where pg_cron runs jobs).
--
-- Design (docs/architecture.md, docs/security.md):
-- * dispatch() inserts one row into pgdispatch.job (a queue, not a cron job per call);
--   the job is visible to workers when the dispatching transaction commits.
-- * Workers are long-lived pg_cron jobs scheduled AS the dispatching role, so a job runs
--   in a session whose session_user is the role that dispatched it: SET ROLE tricks inside
--   a command cannot reach any other role's privileges.
-- * A worker claims due jobs with FOR UPDATE SKIP LOCKED, runs each in a subtransaction and
--   moves the finished ones to pgdispatch.job_history in the same transaction as the job's
--   effects: a crash rolls back both and the job runs again, never twice.
-- * A running job is marked by a session advisory lock (classid 1885824112, objid = low
--   32 bits of the job id, objsubid 2) held by its worker while the command executes.

DO $check$
BEGIN
  -- pg_cron in this database, or (an app database) pg_cron's launcher running for another
  -- database of this server, which runs this database's workers through
  -- cron.schedule_in_database()
  IF (to_regnamespace('cron') IS NULL
      OR NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron'))
     AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                      WHERE (a.backend_type = 'pg_cron launcher'
                             OR a.application_name = 'pg_cron scheduler')
                        AND a.datname IS DISTINCT FROM current_database()) THEN
    RAISE EXCEPTION 'pgdispatch needs the pg_cron extension in this database'
      USING ERRCODE = 'feature_not_supported',
            HINT = 'Add pg_cron to shared_preload_libraries, set cron.database_name to this '
                   'database, restart PostgreSQL and run CREATE EXTENSION pg_cron '
                   '(Debian: apt-get install postgresql-15-cron; Supabase/RDS: enable the '
                   'pg_cron extension).';
  END IF;
  IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron')
     AND (pg_has_role('pg_read_all_settings', 'USAGE') OR
          (SELECT rolsuper FROM pg_roles WHERE rolname = current_user))
     AND current_setting('cron.database_name', true) IS DISTINCT FROM current_database() THEN
    RAISE EXCEPTION 'pgdispatch must be installed in database %, where pg_cron runs its jobs',
      coalesce(current_setting('cron.database_name', true), 'postgres')
      USING ERRCODE = 'feature_not_supported',
            HINT = 'Connect to the database named by cron.database_name, or change that setting.';
  END IF;
END
$check$;

-- The same script is run as plain SQL (psql, sa_pgdispatch.install()) and as an extension's
-- script (CREATE EXTENSION, natively or through pg_tle), where the control file's
-- schema = pgdispatch has made the schema already (owned by the installing role, not a
-- member of the extension: CREATE SCHEMA and CREATE SCHEMA IF NOT EXISTS both fail there).
-- No transaction control at the top level: CREATE EXTENSION runs the script in one.
DO $schema$
BEGIN
  IF to_regnamespace('pgdispatch') IS NULL THEN
    CREATE SCHEMA pgdispatch;
  END IF;
END
$schema$;
COMMENT ON SCHEMA pgdispatch IS 'sa_pgdispatch: asynchronous SQL side effects driven by pg_cron';
REVOKE ALL ON SCHEMA pgdispatch FROM PUBLIC;

-- ---------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------

CREATE TABLE pgdispatch.meta (
  key   text PRIMARY KEY,
  value text NOT NULL
);
INSERT INTO pgdispatch.meta VALUES ('version', '0.1.0');

-- Settings: one row. Workers re-read it about once a second.
CREATE TABLE pgdispatch.settings (
  singleton        boolean  PRIMARY KEY DEFAULT true CHECK (singleton),
  poll_min         interval NOT NULL DEFAULT '500 microseconds' CHECK (poll_min > '0'),
  poll_max         interval NOT NULL DEFAULT '20 milliseconds',
  fast_poll_window interval NOT NULL DEFAULT '1 second',
  batch_size       integer  NOT NULL DEFAULT 50 CHECK (batch_size BETWEEN 1 AND 60),
  batch_time       interval NOT NULL DEFAULT '20 milliseconds',
  worker_runtime   interval NOT NULL DEFAULT '60 seconds' CHECK (worker_runtime > '0'),
  retention        interval NOT NULL DEFAULT '7 days',
  prune_batch      integer  NOT NULL DEFAULT 1000 CHECK (prune_batch > 0),
  retry_backoff    interval NOT NULL DEFAULT '1 second',
  retry_backoff_max interval NOT NULL DEFAULT '1 hour',
  default_workers  integer  NOT NULL DEFAULT 1 CHECK (default_workers BETWEEN 1 AND 16),
  watchdog_poll    interval NOT NULL DEFAULT '200 milliseconds',
  CHECK (poll_max >= poll_min)
);
INSERT INTO pgdispatch.settings DEFAULT VALUES;
COMMENT ON TABLE pgdispatch.settings IS
  'Worker settings (one row); see docs/sql-api.md#settings';

-- The hot queue: queued and running jobs only.
CREATE TABLE pgdispatch.job (
  id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  role         name        NOT NULL DEFAULT current_user,
  command      text        NOT NULL,
  payload      jsonb,
  priority     integer     NOT NULL DEFAULT 0,
  attempts     integer     NOT NULL DEFAULT 0,
  max_attempts integer     NOT NULL DEFAULT 1,
  timeout      interval,
  capture      boolean     NOT NULL DEFAULT false,
  job_key      text,
  created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
  run_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
  last_error   jsonb
);
-- A job always belongs to the role that wrote it, whoever that is (superusers and
-- BYPASSRLS roles included). NOT VALID so that pg_dump/restore of queued jobs works.
ALTER TABLE pgdispatch.job
  ADD CONSTRAINT job_role_is_current_user CHECK (role = current_user) NOT VALID;
CREATE INDEX job_claim ON pgdispatch.job (role, priority DESC, run_at, id);
CREATE UNIQUE INDEX job_key_queued ON pgdispatch.job (role, job_key) WHERE job_key IS NOT NULL;

-- Finished jobs (succeeded, failed, cancelled), out of the claim path; pruned by workers.
CREATE TABLE pgdispatch.job_history (
  id            bigint      PRIMARY KEY,
  role          name        NOT NULL DEFAULT current_user,
  command       text        NOT NULL,
  payload       jsonb,
  state         text        NOT NULL CHECK (state IN ('succeeded', 'failed', 'cancelled')),
  priority      integer     NOT NULL,
  attempts      integer     NOT NULL,
  max_attempts  integer     NOT NULL,
  timeout       interval,
  capture       boolean     NOT NULL,
  job_key       text,
  created_at    timestamptz NOT NULL,
  run_at        timestamptz NOT NULL,
  started_at    timestamptz,
  finished_at   timestamptz NOT NULL,
  result        jsonb,
  rows_affected bigint,
  error         jsonb
);
CREATE INDEX job_history_role_finished ON pgdispatch.job_history (role, finished_at);

-- Cancellation requests for running jobs; the watchdog signals their workers.
CREATE TABLE pgdispatch.cancel_request (
  job_id       bigint      PRIMARY KEY,
  role         name        NOT NULL DEFAULT current_user,
  requested_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- One row per role that has (or had) workers. enabled = false after stop(): dispatching
-- keeps queueing but nothing restarts the workers until start().
CREATE TABLE pgdispatch.worker (
  role       name        PRIMARY KEY DEFAULT current_user,
  workers    integer     NOT NULL CHECK (workers BETWEEN 1 AND 16),
  enabled    boolean     NOT NULL,
  schedule   text,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
ALTER TABLE pgdispatch.worker
  ADD CONSTRAINT worker_role_is_current_user CHECK (role = current_user) NOT VALID;

-- SECURITY DEFINER copies of pgdispatch.trigger() made by definer_trigger_function().
CREATE TABLE pgdispatch.definer_function (
  fn         regprocedure PRIMARY KEY,
  owner      name         NOT NULL DEFAULT current_user,
  created_at timestamptz  NOT NULL DEFAULT clock_timestamp()
);

-- Row level security: every role reads and writes its own rows only. The installing
-- role (the owner) is trusted like an extension owner: it owns the code that runs.
ALTER TABLE pgdispatch.job ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgdispatch.job_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgdispatch.cancel_request ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgdispatch.worker ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgdispatch.definer_function ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_jobs ON pgdispatch.job
  USING (role = current_user) WITH CHECK (role = current_user);
CREATE POLICY own_history ON pgdispatch.job_history
  USING (role = current_user) WITH CHECK (role = current_user);
CREATE POLICY own_requests ON pgdispatch.cancel_request
  USING (role = current_user) WITH CHECK (role = current_user);
CREATE POLICY own_worker ON pgdispatch.worker
  USING (role = current_user) WITH CHECK (role = current_user);
CREATE POLICY own_functions ON pgdispatch.definer_function
  USING (owner = current_user) WITH CHECK (owner = current_user);
CREATE POLICY everyone_reads ON pgdispatch.settings FOR SELECT USING (true);

-- Backups. pg_dump dumps the rows of an extension's tables (and a sequence's position) only
-- when the extension's script registers them, so that a restore keeps the queue, the
-- history, the workers and the settings; rows the script itself inserts are filtered out
-- (meta's version) or replaced (settings, a single row: settings_restore below).
-- pg_extension_config_dump() raises feature_not_supported outside CREATE EXTENSION / ALTER
-- EXTENSION (plain SQL), where pg_dump dumps every table and sequence of the schema anyway.
DO $config_dump$
BEGIN
  PERFORM pg_catalog.pg_extension_config_dump('pgdispatch.job', '');
  PERFORM pg_catalog.pg_extension_config_dump('pgdispatch.job_id_seq', '');
  PERFORM pg_catalog.pg_extension_config_dump('pgdispatch.job_history', '');
  PERFORM pg_catalog.pg_extension_config_dump('pgdispatch.cancel_request', '');
  PERFORM pg_catalog.pg_extension_config_dump('pgdispatch.worker', '');
  PERFORM pg_catalog.pg_extension_config_dump('pgdispatch.definer_function', '');
  PERFORM pg_catalog.pg_extension_config_dump('pgdispatch.settings', '');
  PERFORM pg_catalog.pg_extension_config_dump('pgdispatch.meta', 'WHERE key <> ''version''');
EXCEPTION WHEN feature_not_supported THEN
  NULL;  -- not an extension's script
END
$config_dump$;

-- A restore (of an extension) loads the dumped settings row into a table whose script has
-- inserted the default row already: the loaded row replaces it.
CREATE FUNCTION pgdispatch._settings_restore() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM pgdispatch.settings;
  RETURN NEW;
END
$$;
CREATE TRIGGER settings_restore BEFORE INSERT ON pgdispatch.settings
  FOR EACH ROW EXECUTE FUNCTION pgdispatch._settings_restore();

-- ---------------------------------------------------------------------------------------
-- Internal helpers
-- ---------------------------------------------------------------------------------------

-- Advisory lock namespace ('pgdp'): (1885824112, low 32 bits of job id) marks a running
-- job; (1885824113 + slot, role oid) is a worker slot; slot 0 is the watchdog.
CREATE FUNCTION pgdispatch._lock_key(id bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT ((id & 4294967295) - CASE WHEN (id & 4294967295) > 2147483647 THEN 4294967296 ELSE 0 END)::integer
$$;

CREATE FUNCTION pgdispatch._role_key() RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT pgdispatch._lock_key((SELECT oid::bigint FROM pg_roles WHERE rolname = current_user))
$$;

-- Is the current role an administrator of pgdispatch (member of the schema owner)?
CREATE FUNCTION pgdispatch._is_admin() RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT pg_has_role(current_user,
                   (SELECT nspowner FROM pg_namespace WHERE nspname = 'pgdispatch'), 'MEMBER')
$$;

-- pg_cron facts: version, whether second schedules exist (>= 1.5), background workers.
CREATE FUNCTION pgdispatch.cron_info(
  OUT version text, OUT major integer, OUT minor integer,
  OUT second_schedules boolean, OUT background_workers boolean, OUT database_name text)
LANGUAGE plpgsql STABLE AS $$
-- background_workers is NULL when the caller may not read cron.use_background_workers
BEGIN
  SELECT e.extversion INTO version FROM pg_extension e WHERE e.extname = 'pg_cron';
  IF version IS NULL THEN
    RAISE EXCEPTION 'pg_cron is not installed in this database' USING ERRCODE = 'feature_not_supported';
  END IF;
  major := split_part(version, '.', 1)::integer;
  minor := (regexp_match(split_part(version, '.', 2), '^[0-9]+'))[1]::integer;
  second_schedules := (major, minor) >= (1, 5);
  -- pg_cron's settings are superuser-only (or pg_read_all_settings): unknown (NULL)
  -- to other roles. The extension itself can only exist in cron.database_name.
  BEGIN
    database_name := coalesce(current_setting('cron.database_name', true), 'postgres');
  EXCEPTION WHEN insufficient_privilege THEN
    database_name := NULL;
  END;
  BEGIN
    background_workers := coalesce(current_setting('cron.use_background_workers', true), 'off') = 'on';
  EXCEPTION WHEN insufficient_privilege THEN
    background_workers := NULL;
  END;
END
$$;

-- How many statements does an SQL string hold? A small lexer that knows quotes, dollar
-- quotes, E'' strings, identifiers and comments. Used only when a command that is given
-- a payload contains a ';' before its end.
CREATE FUNCTION pgdispatch._statement_count(sql text) RETURNS integer
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
  b bytea := convert_to(sql, 'UTF8');
  n integer := length(b);
  i integer := 0;
  c integer;
  depth integer;
  tag bytea;
  j integer;
  statements integer := 0;
  content boolean := false;   -- the current statement has something besides blanks
BEGIN
  WHILE i < n LOOP
    c := get_byte(b, i);
    IF c = 59 THEN                                   -- ;
      IF content THEN statements := statements + 1; END IF;
      content := false; i := i + 1; CONTINUE;
    ELSIF c IN (32, 9, 10, 13, 12) THEN              -- blanks
      i := i + 1; CONTINUE;
    END IF;
    content := true;
    IF c = 45 AND i + 1 < n AND get_byte(b, i + 1) = 45 THEN          -- -- comment
      i := i + 2;
      WHILE i < n AND get_byte(b, i) <> 10 LOOP i := i + 1; END LOOP;
      content := statements > 0 OR content;
    ELSIF c = 47 AND i + 1 < n AND get_byte(b, i + 1) = 42 THEN       -- /* comment */
      depth := 1; i := i + 2;
      WHILE i < n AND depth > 0 LOOP
        IF get_byte(b, i) = 47 AND i + 1 < n AND get_byte(b, i + 1) = 42 THEN
          depth := depth + 1; i := i + 2;
        ELSIF get_byte(b, i) = 42 AND i + 1 < n AND get_byte(b, i + 1) = 47 THEN
          depth := depth - 1; i := i + 2;
        ELSE i := i + 1; END IF;
      END LOOP;
    ELSIF c = 39 THEN                                 -- 'string' ('' escapes; E'' below)
      IF i > 0 AND get_byte(b, i - 1) IN (69, 101) THEN
        i := i + 1;
        WHILE i < n LOOP
          IF get_byte(b, i) = 92 THEN i := i + 2;
          ELSIF get_byte(b, i) = 39 THEN
            IF i + 1 < n AND get_byte(b, i + 1) = 39 THEN i := i + 2; ELSE EXIT; END IF;
          ELSE i := i + 1; END IF;
        END LOOP;
      ELSE
        i := i + 1;
        WHILE i < n LOOP
          IF get_byte(b, i) = 39 THEN
            IF i + 1 < n AND get_byte(b, i + 1) = 39 THEN i := i + 2; ELSE EXIT; END IF;
          ELSE i := i + 1; END IF;
        END LOOP;
      END IF;
      i := i + 1;
    ELSIF c = 34 THEN                                 -- "identifier"
      i := i + 1;
      WHILE i < n LOOP
        IF get_byte(b, i) = 34 THEN
          IF i + 1 < n AND get_byte(b, i + 1) = 34 THEN i := i + 2; ELSE EXIT; END IF;
        ELSE i := i + 1; END IF;
      END LOOP;
      i := i + 1;
    ELSIF c = 36 THEN                                 -- $tag$ ... $tag$ or $1
      j := i + 1;
      WHILE j < n AND (get_byte(b, j) BETWEEN 65 AND 90 OR get_byte(b, j) BETWEEN 97 AND 122
                       OR get_byte(b, j) = 95 OR get_byte(b, j) >= 128
                       OR (j > i + 1 AND get_byte(b, j) BETWEEN 48 AND 57)) LOOP
        j := j + 1;
      END LOOP;
      IF j < n AND get_byte(b, j) = 36 THEN
        tag := substring(b FROM i + 1 FOR j - i + 1);
        j := position(tag IN substring(b FROM j + 2));
        IF j = 0 THEN i := n; ELSE i := i + length(tag) + j - 1 + length(tag); END IF;
      ELSE
        i := i + 1;
      END IF;
    ELSE
      i := i + 1;
    END IF;
  END LOOP;
  IF content THEN statements := statements + 1; END IF;
  RETURN statements;
END
$$;

-- Make sure the calling role has workers, once per session and role. Raises a clear
-- error for roles that cannot run a worker (NOLOGIN).
CREATE FUNCTION pgdispatch._ensure_worker() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  known boolean;
BEGIN
  SELECT true INTO known FROM pgdispatch.worker WHERE role = current_user;
  IF NOT FOUND THEN
    PERFORM pgdispatch.start();
  END IF;
  PERFORM set_config('pgdispatch.worker_checked', current_user, false);
END
$$;

-- ---------------------------------------------------------------------------------------
-- Dispatching
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION pgdispatch.dispatch(
  command      text,
  payload      jsonb    DEFAULT NULL,
  delay        interval DEFAULT NULL,
  priority     integer  DEFAULT 0,
  max_attempts integer  DEFAULT 1,
  timeout      interval DEFAULT NULL,
  capture      boolean  DEFAULT false,
  job_key      text     DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
  job_id bigint;
  at timestamptz := clock_timestamp();
BEGIN
  IF command IS NULL THEN
    RAISE EXCEPTION 'pgdispatch: command must not be NULL' USING ERRCODE = 'null_value_not_allowed';
  END IF;
  IF btrim(command, E' \t\r\n\f;') = '' THEN
    RAISE EXCEPTION 'pgdispatch: command must not be empty' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF payload IS NOT NULL AND strpos(rtrim(command, E' \t\r\n\f;'), ';') > 0
     AND pgdispatch._statement_count(command) > 1 THEN
    RAISE EXCEPTION 'pgdispatch: a command with a payload must be a single statement'
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'The payload is bound as $1, which only a single statement can take. '
                   'Dispatch one job per statement, or wrap the statements in a function.';
  END IF;
  IF delay < interval '0' THEN
    RAISE EXCEPTION 'pgdispatch: delay must not be negative (got %)', delay
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF max_attempts IS NULL OR max_attempts < 1 THEN
    RAISE EXCEPTION 'pgdispatch: max_attempts must be at least 1 (got %)', max_attempts
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF timeout <= interval '0' THEN
    RAISE EXCEPTION 'pgdispatch: timeout must be positive (got %)', timeout
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF current_setting('pgdispatch.worker_checked', true) IS DISTINCT FROM current_user::text THEN
    PERFORM pgdispatch._ensure_worker();
  END IF;

  IF job_key IS NULL THEN
    -- the hot path: a plain insert (ON CONFLICT costs a speculative insertion)
    INSERT INTO pgdispatch.job AS j
           (command, payload, priority, max_attempts, timeout, capture, created_at, run_at)
    VALUES (command, payload, coalesce(priority, 0), max_attempts, timeout,
            coalesce(capture, false), at, at + coalesce(delay, interval '0'))
    RETURNING j.id INTO job_id;
    RETURN job_id;
  END IF;
  LOOP
    INSERT INTO pgdispatch.job AS j
           (command, payload, priority, max_attempts, timeout, capture, job_key, created_at, run_at)
    VALUES (command, payload, coalesce(priority, 0), max_attempts, timeout,
            coalesce(capture, false), job_key, at, at + coalesce(delay, interval '0'))
    ON CONFLICT (role, job_key) WHERE job_key IS NOT NULL DO NOTHING
    RETURNING j.id INTO job_id;
    IF job_id IS NULL THEN
      -- the same key is queued (or running): that job stands for this one
      SELECT j.id INTO job_id FROM pgdispatch.job j
       WHERE j.role = current_user AND j.job_key = dispatch.job_key;
    END IF;
    EXIT WHEN job_id IS NOT NULL;  -- else it finished in between: try again
  END LOOP;
  RETURN job_id;
END
$$;
COMMENT ON FUNCTION pgdispatch.dispatch(text, jsonb, interval, integer, integer, interval, boolean, text) IS
  'Queue a command for asynchronous execution as the current role; returns the job id';

-- pg_dispatch compatibility.
CREATE FUNCTION pgdispatch.fire(command text) RETURNS void
LANGUAGE sql VOLATILE AS $$
  SELECT pgdispatch.dispatch(command);
$$;

CREATE FUNCTION pgdispatch.snooze(command text, delay interval) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF delay IS NULL THEN
    RAISE EXCEPTION 'pgdispatch: snooze needs a delay' USING ERRCODE = 'null_value_not_allowed';
  END IF;
  PERFORM pgdispatch.dispatch(command, delay => delay);
END
$$;

-- pg_later compatibility: delay in seconds, results captured.
CREATE FUNCTION pgdispatch.exec(query text, delay bigint DEFAULT 0) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
  SELECT pgdispatch.dispatch(query, delay => make_interval(secs => coalesce(delay, 0)), capture => true);
$$;

-- ---------------------------------------------------------------------------------------
-- Looking at jobs
-- ---------------------------------------------------------------------------------------

CREATE VIEW pgdispatch.jobs WITH (security_barrier) AS
SELECT j.id, j.role, j.command, j.payload,
       CASE WHEN l.pid IS NULL THEN 'queued' ELSE 'running' END AS state,
       j.attempts, j.max_attempts, j.priority, j.job_key, j.timeout, j.capture,
       j.created_at, j.run_at,
       NULL::timestamptz AS started_at, NULL::timestamptz AS finished_at,
       NULL::jsonb AS result, NULL::bigint AS rows_affected, j.last_error AS error,
       l.pid AS worker_pid
  FROM pgdispatch.job j
  LEFT JOIN pg_locks l
    ON l.locktype = 'advisory' AND l.classid = 1885824112::oid AND l.objsubid = 2
   AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.objid::bigint = (j.id & 4294967295)
 WHERE j.role = current_user OR (SELECT pgdispatch._is_admin())
UNION ALL
SELECT h.id, h.role, h.command, h.payload, h.state,
       h.attempts, h.max_attempts, h.priority, h.job_key, h.timeout, h.capture,
       h.created_at, h.run_at, h.started_at, h.finished_at,
       h.result, h.rows_affected, h.error, NULL::integer
  FROM pgdispatch.job_history h
 WHERE h.role = current_user OR (SELECT pgdispatch._is_admin());
COMMENT ON VIEW pgdispatch.jobs IS
  'The caller''s jobs (all roles'' for administrators): queued, running, succeeded, failed, cancelled';

CREATE FUNCTION pgdispatch.fetch_results(job_id bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
           'query', h.command,
           'job_id', h.id,
           'result', CASE WHEN h.state = 'succeeded'
                          THEN coalesce(h.result, '[]'::jsonb)
                          ELSE to_jsonb(coalesce(h.error ->> 'message', h.state)) END,
           'status', CASE WHEN h.state = 'succeeded' THEN 'success' ELSE 'failure' END)
    FROM pgdispatch.job_history h
   WHERE h.id = fetch_results.job_id
     AND (h.role = current_user OR (SELECT pgdispatch._is_admin()));
$$;

-- ---------------------------------------------------------------------------------------
-- Cancelling
-- ---------------------------------------------------------------------------------------

-- true: the job was queued and is now cancelled, or it is running and its cancellation
-- was requested (the watchdog interrupts it within its poll interval);
-- false: the job had already finished. Unknown jobs (or other roles' jobs) raise.
CREATE FUNCTION pgdispatch.cancel(job_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  victim pgdispatch.job;
BEGIN
  SELECT * INTO victim FROM pgdispatch.job j
   WHERE j.id = cancel.job_id AND j.role = current_user
     FOR UPDATE SKIP LOCKED;
  IF FOUND THEN
    DELETE FROM pgdispatch.job j WHERE j.id = victim.id;
    INSERT INTO pgdispatch.job_history
           (id, role, command, payload, state, priority, attempts, max_attempts, timeout, capture,
            job_key, created_at, run_at, finished_at, error)
    VALUES (victim.id, victim.role, victim.command, victim.payload, 'cancelled', victim.priority,
            victim.attempts, victim.max_attempts, victim.timeout, victim.capture, victim.job_key,
            victim.created_at, victim.run_at, clock_timestamp(), victim.last_error);
    RETURN true;
  END IF;
  IF EXISTS (SELECT 1 FROM pgdispatch.job j WHERE j.id = cancel.job_id AND j.role = current_user) THEN
    INSERT INTO pgdispatch.cancel_request (job_id) VALUES (cancel.job_id) ON CONFLICT DO NOTHING;
    RETURN true;
  END IF;
  IF EXISTS (SELECT 1 FROM pgdispatch.job_history h
              WHERE h.id = cancel.job_id AND h.role = current_user) THEN
    RETURN false;
  END IF;
  RAISE EXCEPTION 'pgdispatch: job % does not exist or belongs to another role', job_id
    USING ERRCODE = 'no_data_found';
END
$$;

-- ---------------------------------------------------------------------------------------
-- Workers
-- ---------------------------------------------------------------------------------------

-- The pg_cron schedule of the workers: pg_cron 1.4 knows minute schedules only; from
-- 1.5 a worker that stopped (crash, terminate) is replaced within 10 seconds.
CREATE FUNCTION pgdispatch._worker_schedule() RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN (SELECT second_schedules FROM pgdispatch.cron_info())
            THEN '10 seconds' ELSE '* * * * *' END
$$;

-- Schedule (or re-schedule) the calling role's pg_cron workers and enable them.
CREATE FUNCTION pgdispatch.start(workers integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  info record;
  n integer;
  sched text;
  jobname text;
  can_login boolean;
BEGIN
  info := pgdispatch.cron_info();
  IF info.background_workers AND NOT info.second_schedules THEN
    RAISE EXCEPTION 'pgdispatch: pg_cron % runs jobs in background-worker mode, where one long '
                    'job blocks every other job', info.version
      USING ERRCODE = 'feature_not_supported',
            HINT = 'Set cron.use_background_workers = off (libpq mode, with cron.host and '
                   'passwordless local connections) or upgrade pg_cron to 1.5 or later.';
  END IF;
  IF info.database_name IS NOT NULL AND info.database_name <> current_database() THEN
    RAISE EXCEPTION 'pgdispatch: pg_cron runs jobs in database %, not in %',
      info.database_name, current_database() USING ERRCODE = 'feature_not_supported';
  END IF;
  SELECT rolcanlogin INTO can_login FROM pg_roles WHERE rolname = current_user;
  IF NOT can_login THEN
    RAISE EXCEPTION 'pgdispatch: role % cannot log in, so no pg_cron worker can run its jobs',
      current_user
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'Dispatch from a SECURITY DEFINER function or trigger owned by a role that can '
                   'log in (e.g. a dispatch trigger with security => definer); the job then runs '
                   'as that owner.';
  END IF;
  SELECT coalesce(workers, (SELECT w.workers FROM pgdispatch.worker w WHERE w.role = current_user),
                  (SELECT default_workers FROM pgdispatch.settings))
    INTO n;
  IF n < 1 OR n > 16 THEN
    RAISE EXCEPTION 'pgdispatch: workers must be between 1 and 16 (got %)', n
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  sched := pgdispatch._worker_schedule();
  INSERT INTO pgdispatch.worker AS w (workers, enabled, schedule)
  VALUES (n, true, sched)
  ON CONFLICT (role) DO UPDATE SET workers = excluded.workers, enabled = true,
                                   schedule = excluded.schedule, updated_at = clock_timestamp();
  FOR slot IN 1..n LOOP
    PERFORM cron.schedule(format('pgdispatch:%s:%s', current_user, slot), sched,
                          format('CALL pgdispatch.work(slot => %s)', slot));
  END LOOP;
  PERFORM cron.schedule(format('pgdispatch:%s:watchdog', current_user), sched,
                        'CALL pgdispatch.watchdog()');
  FOR jobname IN
    SELECT j.jobname FROM cron.job j
     WHERE j.username = current_user AND j.jobname LIKE 'pgdispatch:%'
       AND j.jobname <> format('pgdispatch:%s:watchdog', current_user)
       AND NOT j.jobname = ANY (ARRAY(SELECT format('pgdispatch:%s:%s', current_user, s)
                                        FROM generate_series(1, n) s))
  LOOP
    PERFORM cron.unschedule(jobname);
  END LOOP;
  PERFORM set_config('pgdispatch.worker_checked', current_user, false);
END
$$;

-- Unschedule the calling role's workers; running ones finish their batch and exit within
-- about a second. Dispatching keeps queueing jobs; start() resumes.
CREATE FUNCTION pgdispatch.stop() RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  jobname text;
BEGIN
  INSERT INTO pgdispatch.worker AS w (workers, enabled)
  VALUES ((SELECT default_workers FROM pgdispatch.settings), false)
  ON CONFLICT (role) DO UPDATE SET enabled = false, updated_at = clock_timestamp();
  FOR jobname IN
    SELECT j.jobname FROM cron.job j
     WHERE j.username = current_user AND j.jobname LIKE 'pgdispatch:%'
  LOOP
    PERFORM cron.unschedule(jobname);
  END LOOP;
  PERFORM set_config('pgdispatch.worker_checked', current_user, false);
END
$$;

-- Record the outcomes of a batch: delete the finished jobs from the queue and insert them
-- into the history, in one statement.
CREATE FUNCTION pgdispatch._finish(
  ids bigint[], states text[], started timestamptz[], finished timestamptz[],
  results jsonb[], affected bigint[], errors jsonb[])
RETURNS void
LANGUAGE sql VOLATILE AS $$
  WITH o AS (
    SELECT * FROM unnest(ids, states, started, finished, results, affected, errors)
             AS o(id, state, started_at, finished_at, result, rows_affected, error)
  ), d AS (
    DELETE FROM pgdispatch.job j USING o WHERE j.id = o.id
    RETURNING j.*, o.state AS o_state, o.started_at AS o_started, o.finished_at AS o_finished,
              o.result AS o_result, o.rows_affected AS o_affected, o.error AS o_error
  )
  INSERT INTO pgdispatch.job_history
         (id, role, command, payload, state, priority, attempts, max_attempts, timeout, capture,
          job_key, created_at, run_at, started_at, finished_at, result, rows_affected, error)
  SELECT d.id, d.role, d.command, d.payload, d.o_state, d.priority, d.attempts + 1,
         d.max_attempts, d.timeout, d.capture, d.job_key, d.created_at, d.run_at,
         d.o_started, d.o_finished, d.o_result, d.o_affected, d.o_error
    FROM d;
  DELETE FROM pgdispatch.cancel_request c WHERE c.job_id = ANY (ids);
$$;

-- Run due jobs of the calling role.
--   slot => 0 (default): run in this session, e.g. CALL pgdispatch.work(drain => true)
--     in a test: every due job, then return.
--   slot => N >= 1: a pg_cron worker; exits at once when slot N is already served,
--     otherwise serves until its hand-over deadline (the next schedule tick plus a little,
--     so that pg_cron's pending run starts the moment this one exits).
-- Jobs run with the privileges of the role that dispatched them: this procedure only ever
-- claims jobs whose role is the session's own login role.
CREATE PROCEDURE pgdispatch.work(
  slot integer DEFAULT 0,
  drain boolean DEFAULT false,
  max_runtime interval DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
  me name := session_user;
  cfg pgdispatch.settings;
  j pgdispatch.job;
  t_start timestamptz := clock_timestamp();
  deadline timestamptz;
  hard_deadline timestamptz;
  t_batch timestamptz;
  t_job timestamptz;
  t_last_job timestamptz := clock_timestamp();
  t_settings timestamptz := clock_timestamp();
  t_prune timestamptz := clock_timestamp();
  sleep_s double precision;
  claimed integer;
  -- outcomes of the current batch
  o_ids bigint[]; o_states text[]; o_started timestamptz[]; o_finished timestamptz[];
  o_results jsonb[]; o_affected bigint[]; o_errors jsonb[];
  res jsonb; affected bigint; err jsonb; ok boolean;
  e_state text; e_msg text; e_detail text; e_hint text; e_context text;
  enabled boolean;
  backoff interval;
BEGIN
  IF me <> current_user THEN
    RAISE EXCEPTION 'pgdispatch.work() must run as the session''s login role (session_user %, '
                    'current_user %)', me, current_user
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'Jobs run with exactly the privileges of the role that dispatched them: '
                   'connect as that role instead of SET ROLE.';
  END IF;
  IF slot < 0 THEN
    RAISE EXCEPTION 'pgdispatch: slot must be >= 0' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF slot > 0 THEN
    IF NOT pg_try_advisory_lock(1885824113 + slot, pgdispatch._role_key()) THEN
      RETURN;  -- another instance serves this slot (pg_cron catch-up run)
    END IF;
  END IF;
  SELECT * INTO cfg FROM pgdispatch.settings;
  IF max_runtime IS NOT NULL THEN
    deadline := t_start + max_runtime;
  ELSIF slot > 0 THEN
    IF pgdispatch._worker_schedule() = '* * * * *' THEN
      deadline := date_trunc('minute', t_start) + interval '1 minute' + interval '2 seconds';
    ELSE
      deadline := t_start + cfg.worker_runtime;
    END IF;
  ELSE
    deadline := 'infinity';
  END IF;
  hard_deadline := deadline + cfg.worker_runtime;
  COMMIT;

  LOOP
    -- one batch: claim, run, record, commit
    claimed := 0;
    o_ids := '{}'; o_states := '{}'; o_started := '{}'; o_finished := '{}';
    o_results := '{}'; o_affected := '{}'; o_errors := '{}';
    t_batch := clock_timestamp();
    FOR j IN
      SELECT * FROM pgdispatch.job q
       WHERE q.role = me AND q.run_at <= clock_timestamp()
       ORDER BY q.priority DESC, q.run_at, q.id
       LIMIT cfg.batch_size
         FOR UPDATE SKIP LOCKED
    LOOP
      claimed := claimed + 1;
      PERFORM pg_advisory_lock(1885824112, pgdispatch._lock_key(j.id));
      t_job := clock_timestamp();
      res := NULL; affected := NULL; err := NULL;
      BEGIN
        IF j.capture THEN
          BEGIN
            EXECUTE 'WITH pgdispatch_q AS (' || rtrim(j.command, E' \t\r\n\f;') || E'\n) '
                    'SELECT coalesce(jsonb_agg(to_jsonb(pgdispatch_q)), ''[]'') FROM pgdispatch_q'
              INTO res USING j.payload;
            affected := jsonb_array_length(res);
          EXCEPTION WHEN syntax_error OR feature_not_supported THEN
            -- not a row-returning statement (DML without RETURNING, utility, several
            -- statements): run it as it is and keep the row count
            res := NULL;
            IF j.payload IS NULL THEN EXECUTE j.command; ELSE EXECUTE j.command USING j.payload; END IF;
            GET DIAGNOSTICS affected = ROW_COUNT;
            res := '[]';
          END;
        ELSIF j.payload IS NULL THEN
          EXECUTE j.command;
          GET DIAGNOSTICS affected = ROW_COUNT;
        ELSE
          EXECUTE j.command USING j.payload;
          GET DIAGNOSTICS affected = ROW_COUNT;
        END IF;
        ok := true;
      EXCEPTION WHEN OTHERS OR query_canceled THEN
        GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_msg = MESSAGE_TEXT,
          e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT, e_context = PG_EXCEPTION_CONTEXT;
        ok := false;
        IF e_state = '57014' THEN
          IF EXISTS (SELECT 1 FROM pgdispatch.cancel_request c WHERE c.job_id = j.id) THEN
            e_msg := 'job cancelled while running';
          ELSIF j.timeout IS NOT NULL AND clock_timestamp() - t_job >= j.timeout * 0.9 THEN
            e_msg := format('job exceeded its timeout of %s', j.timeout);
          END IF;
        END IF;
        -- the context of the worker itself says nothing about the job
        e_context := nullif(regexp_replace(e_context, E'\\n?PL/pgSQL function pgdispatch\\.work\\([^\\n]*', '', 'g'), '');
        err := jsonb_strip_nulls(jsonb_build_object(
                 'sqlstate', e_state, 'message', e_msg, 'detail', nullif(e_detail, ''),
                 'hint', nullif(e_hint, ''), 'context', nullif(e_context, ''),
                 'attempt', j.attempts + 1));
      END;
      PERFORM pg_advisory_unlock(1885824112, pgdispatch._lock_key(j.id));

      -- a fresh session for the next job: settings, role, temp objects, prepared statements
      IF current_user <> me THEN SET ROLE NONE; END IF;
      IF session_user <> me THEN RESET SESSION AUTHORIZATION; END IF;
      RESET ALL;
      IF pg_my_temp_schema() <> 0 THEN DISCARD TEMP; END IF;
      DEALLOCATE ALL;
      UNLISTEN *;

      IF ok THEN
        o_ids := o_ids || j.id; o_states := o_states || 'succeeded'::text;
        o_started := o_started || t_job; o_finished := o_finished || clock_timestamp();
        o_results := o_results || res; o_affected := o_affected || affected;
        o_errors := o_errors || NULL::jsonb;
      ELSIF j.attempts + 1 < j.max_attempts AND err ->> 'message' <> 'job cancelled while running' THEN
        backoff := least(cfg.retry_backoff * power(2, j.attempts), cfg.retry_backoff_max);
        UPDATE pgdispatch.job q
           SET attempts = q.attempts + 1, run_at = clock_timestamp() + backoff, last_error = err
         WHERE q.id = j.id;
      ELSE
        o_ids := o_ids || j.id;
        o_states := o_states || CASE WHEN err ->> 'message' = 'job cancelled while running'
                                     THEN 'cancelled' ELSE 'failed' END;
        o_started := o_started || t_job; o_finished := o_finished || clock_timestamp();
        o_results := o_results || NULL::jsonb; o_affected := o_affected || NULL::bigint;
        o_errors := o_errors || err;
      END IF;
      EXIT WHEN clock_timestamp() - t_batch > cfg.batch_time;
    END LOOP;
    IF cardinality(o_ids) > 0 THEN
      PERFORM pgdispatch._finish(o_ids, o_states, o_started, o_finished, o_results, o_affected, o_errors);
    END IF;
    COMMIT;

    IF claimed > 0 THEN
      t_last_job := clock_timestamp();
      IF clock_timestamp() > hard_deadline THEN EXIT; END IF;
      CONTINUE;
    END IF;

    -- idle
    EXIT WHEN drain OR clock_timestamp() >= deadline;
    IF clock_timestamp() - t_settings > interval '1 second' THEN
      t_settings := clock_timestamp();
      SELECT * INTO cfg FROM pgdispatch.settings;
      IF slot > 0 AND max_runtime IS NULL THEN
        -- a scheduled worker: stop() ends it
        SELECT w.enabled INTO enabled FROM pgdispatch.worker w WHERE w.role = me;
        EXIT WHEN enabled IS DISTINCT FROM true;
      END IF;
      IF slot = 1 AND clock_timestamp() - t_prune > interval '10 seconds' THEN
        t_prune := clock_timestamp();
        DELETE FROM pgdispatch.job_history h
         WHERE h.ctid = ANY (ARRAY(SELECT x.ctid FROM pgdispatch.job_history x
                                    WHERE x.role = me
                                      AND x.finished_at < clock_timestamp() - cfg.retention
                                    LIMIT cfg.prune_batch));
        DELETE FROM pgdispatch.cancel_request c
         WHERE c.role = me AND NOT EXISTS (SELECT 1 FROM pgdispatch.job q WHERE q.id = c.job_id);
        COMMIT;
      END IF;
    END IF;
    -- adaptive poll: fast while jobs flow, backing off to poll_max when idle
    IF clock_timestamp() - t_last_job < cfg.fast_poll_window THEN
      sleep_s := extract(epoch FROM cfg.poll_min);
    ELSE
      sleep_s := least(extract(epoch FROM cfg.poll_max),
                       extract(epoch FROM cfg.poll_min)
                       * power(2, extract(epoch FROM clock_timestamp() - t_last_job
                                                     - cfg.fast_poll_window) * 10));
    END IF;
    PERFORM pg_sleep(sleep_s);
  END LOOP;
  IF slot > 0 THEN
    PERFORM pg_advisory_unlock(1885824113 + slot, pgdispatch._role_key());
  END IF;
END
$$;

-- The watchdog of a role: interrupts running jobs that exceeded their timeout or whose
-- cancellation was requested (pg_cancel_backend of the worker; the worker records the
-- outcome and goes on). statement_timeout cannot do this inside a procedure.
CREATE PROCEDURE pgdispatch.watchdog(max_runtime interval DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
  me name := session_user;
  t_start timestamptz := clock_timestamp();
  deadline timestamptz;
  cfg pgdispatch.settings;
  seen jsonb := '{}';     -- job id -> first time seen running (epoch)
  now_s double precision;
  r record;
  enabled boolean;
  t_settings timestamptz := clock_timestamp();
BEGIN
  IF me <> current_user THEN
    RAISE EXCEPTION 'pgdispatch.watchdog() must run as the session''s login role'
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF NOT pg_try_advisory_lock(1885824113, pgdispatch._role_key()) THEN
    RETURN;
  END IF;
  PERFORM set_config('application_name', 'pgdispatch watchdog', false);
  SELECT * INTO cfg FROM pgdispatch.settings;
  IF max_runtime IS NOT NULL THEN
    deadline := t_start + max_runtime;
  ELSIF pgdispatch._worker_schedule() = '* * * * *' THEN
    deadline := date_trunc('minute', t_start) + interval '1 minute' + interval '2 seconds';
  ELSE
    deadline := t_start + cfg.worker_runtime;
  END IF;
  COMMIT;
  WHILE clock_timestamp() < deadline LOOP
    now_s := extract(epoch FROM clock_timestamp());
    FOR r IN
      SELECT q.id, q.timeout, l.pid,
             EXISTS (SELECT 1 FROM pgdispatch.cancel_request c WHERE c.job_id = q.id) AS cancel
        FROM pg_locks l
        JOIN pg_stat_activity a ON a.pid = l.pid AND a.usename = me
        JOIN pgdispatch.job q ON (q.id & 4294967295) = l.objid::bigint AND q.role = me
       WHERE l.locktype = 'advisory' AND l.classid = 1885824112::oid AND l.objsubid = 2
         AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    LOOP
      IF NOT seen ? r.id::text THEN
        seen := seen || jsonb_build_object(r.id::text, now_s);
      END IF;
      IF r.cancel OR (r.timeout IS NOT NULL
                      AND now_s - (seen ->> r.id::text)::double precision
                          >= extract(epoch FROM r.timeout)) THEN
        -- the job still runs on that backend? then interrupt it
        IF EXISTS (SELECT 1 FROM pg_locks l
                    WHERE l.locktype = 'advisory' AND l.classid = 1885824112::oid
                      AND l.objsubid = 2 AND l.granted AND l.pid = r.pid
                      AND l.objid::bigint = (r.id & 4294967295)) THEN
          PERFORM pg_cancel_backend(r.pid);
        END IF;
      END IF;
    END LOOP;
    -- forget jobs that are no longer running
    IF seen <> '{}' THEN
      seen := coalesce((SELECT jsonb_object_agg(k, v) FROM jsonb_each(seen) s(k, v)
                         WHERE EXISTS (SELECT 1 FROM pgdispatch.job q
                                        WHERE q.id = k::bigint)), '{}');
    END IF;
    COMMIT;
    IF clock_timestamp() - t_settings > interval '1 second' THEN
      t_settings := clock_timestamp();
      SELECT * INTO cfg FROM pgdispatch.settings;
      IF max_runtime IS NULL THEN
        SELECT w.enabled INTO enabled FROM pgdispatch.worker w WHERE w.role = me;
        EXIT WHEN enabled IS DISTINCT FROM true;
      END IF;
    END IF;
    PERFORM pg_sleep(extract(epoch FROM cfg.watchdog_poll));
  END LOOP;
  PERFORM pg_advisory_unlock(1885824113, pgdispatch._role_key());
END
$$;

-- ---------------------------------------------------------------------------------------
-- The generic dispatch trigger (argument format: docs/architecture.md)
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION pgdispatch.trigger() RETURNS trigger
LANGUAGE plpgsql AS $body$
DECLARE
  parts text[];
  fn regprocedure;
  cmd text;
  opt text;
  k text;
  v text;
  o_delay interval;
  o_priority integer := 0;
  o_max_attempts integer := 1;
  o_timeout interval;
  seen text[] := '{}';
  rows_json jsonb;
BEGIN
  IF TG_NARGS < 1 THEN
    RAISE EXCEPTION 'pgdispatch.trigger(): trigger % on % needs the side-effect function as its '
                    'first argument', TG_NAME, format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF TG_WHEN <> 'AFTER' THEN
    RAISE EXCEPTION 'pgdispatch.trigger(): trigger % must be an AFTER trigger', TG_NAME
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- parse_ident() rejects anything that is not a (qualified) name
  parts := parse_ident(TG_ARGV[0]);
  IF cardinality(parts) = 2 THEN
    fn := to_regprocedure(format('%I.%I(jsonb)', parts[1], parts[2]));
  END IF;
  IF fn IS NULL THEN
    RAISE EXCEPTION 'pgdispatch.trigger(): function %(jsonb) does not exist', TG_ARGV[0]
      USING ERRCODE = 'undefined_function',
            HINT = 'The first argument of a dispatch trigger names a schema-qualified function '
                   'taking one jsonb argument, e.g. ''app.send_welcome''.';
  END IF;
  cmd := format('SELECT %I.%I($1)', parts[1], parts[2]);
  FOR i IN 1 .. TG_NARGS - 1 LOOP
    opt := TG_ARGV[i];
    k := btrim(split_part(opt, '=', 1));
    v := btrim(substr(opt, strpos(opt, '=') + 1));
    IF strpos(opt, '=') = 0 OR k = ANY (seen) THEN
      RAISE EXCEPTION 'pgdispatch.trigger(): bad option "%" in trigger %', opt, TG_NAME
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'Options are key=value, each key once: delay, priority, max_attempts, timeout.';
    END IF;
    seen := seen || k;
    CASE k
      WHEN 'delay' THEN o_delay := v::interval;
      WHEN 'priority' THEN o_priority := v::integer;
      WHEN 'max_attempts' THEN o_max_attempts := v::integer;
      WHEN 'timeout' THEN o_timeout := v::interval;
      ELSE
        RAISE EXCEPTION 'pgdispatch.trigger(): unknown option "%" in trigger %', k, TG_NAME
          USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Options are key=value: delay, priority, max_attempts, timeout.';
    END CASE;
  END LOOP;

  IF TG_LEVEL = 'ROW' THEN
    PERFORM pgdispatch.dispatch(cmd,
      CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END,
      o_delay, o_priority, o_max_attempts, o_timeout);
    RETURN NULL;
  END IF;

  BEGIN
    IF TG_OP = 'DELETE' THEN
      SELECT jsonb_agg(to_jsonb(t)) INTO rows_json FROM pgdispatch_old t;
    ELSE
      SELECT jsonb_agg(to_jsonb(t)) INTO rows_json FROM pgdispatch_new t;
    END IF;
  EXCEPTION WHEN undefined_table THEN
    RAISE EXCEPTION 'pgdispatch.trigger(): statement-level trigger % has no transition table',
      TG_NAME
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Declare REFERENCING NEW TABLE AS pgdispatch_new (INSERT, UPDATE) or '
                   'OLD TABLE AS pgdispatch_old (DELETE).';
  END;
  IF rows_json IS NOT NULL THEN
    PERFORM pgdispatch.dispatch(cmd, rows_json, o_delay, o_priority, o_max_attempts, o_timeout);
  END IF;
  RETURN NULL;
END
$body$;
COMMENT ON FUNCTION pgdispatch.trigger() IS
  'Generic dispatch trigger: EXECUTE FUNCTION pgdispatch.trigger(''schema.fn'', ''delay=..'', ...)';

-- A SECURITY DEFINER copy of pgdispatch.trigger() in target_schema, owned by the calling
-- role: jobs dispatched through it run as that role (e.g. when the firing role is NOLOGIN).
-- EXECUTE is revoked from PUBLIC: only its owner (and whom it grants) may use it in triggers.
CREATE FUNCTION pgdispatch.definer_trigger_function(target_schema name) RETURNS regprocedure
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  existing regprocedure := to_regprocedure(format('%I.pgdispatch_definer_trigger()', target_schema));
  owner name;
  body text;
BEGIN
  IF to_regnamespace(quote_ident(target_schema)) IS NULL THEN
    RAISE EXCEPTION 'pgdispatch: schema % does not exist', target_schema
      USING ERRCODE = 'invalid_schema_name';
  END IF;
  IF existing IS NOT NULL THEN
    SELECT pg_get_userbyid(p.proowner) INTO owner FROM pg_proc p WHERE p.oid = existing;
    IF owner <> current_user THEN
      RAISE EXCEPTION 'pgdispatch: %.pgdispatch_definer_trigger() belongs to %, not to %',
        target_schema, owner, current_user
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Definer dispatch triggers in one schema run as one role; use that role, '
                     'or another schema.';
    END IF;
  END IF;
  SELECT p.prosrc INTO body FROM pg_proc p WHERE p.oid = 'pgdispatch.trigger()'::regprocedure;
  EXECUTE format('CREATE OR REPLACE FUNCTION %I.pgdispatch_definer_trigger() RETURNS trigger '
                 'LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L',
                 target_schema, body);
  EXECUTE format('REVOKE ALL ON FUNCTION %I.pgdispatch_definer_trigger() FROM PUBLIC', target_schema);
  existing := to_regprocedure(format('%I.pgdispatch_definer_trigger()', target_schema));
  INSERT INTO pgdispatch.definer_function (fn) VALUES (existing) ON CONFLICT DO NOTHING;
  RETURN existing;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Access
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION pgdispatch.grant_usage(role_name name) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  r record;
BEGIN
  SELECT rolname, rolcanlogin INTO r FROM pg_roles WHERE rolname = role_name;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'pgdispatch: role % does not exist', role_name USING ERRCODE = 'undefined_object';
  END IF;
  EXECUTE format('GRANT USAGE ON SCHEMA pgdispatch TO %I', role_name);
  EXECUTE format('GRANT SELECT, INSERT, DELETE, UPDATE (attempts, run_at, last_error) '
                 'ON pgdispatch.job TO %I', role_name);
  EXECUTE format('GRANT SELECT, INSERT, DELETE ON pgdispatch.job_history, '
                 'pgdispatch.cancel_request TO %I', role_name);
  EXECUTE format('GRANT SELECT, INSERT, UPDATE ON pgdispatch.worker TO %I', role_name);
  EXECUTE format('GRANT SELECT, INSERT ON pgdispatch.definer_function TO %I', role_name);
  EXECUTE format('GRANT SELECT ON pgdispatch.settings, pgdispatch.jobs, pgdispatch.meta TO %I', role_name);
  EXECUTE format('GRANT USAGE ON SEQUENCE pgdispatch.job_id_seq TO %I', role_name);
  EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgdispatch TO %I', role_name);
  EXECUTE format('GRANT EXECUTE ON ALL PROCEDURES IN SCHEMA pgdispatch TO %I', role_name);
  -- (pg_cron 1.5 replaced cron.unschedule(name) with cron.unschedule(text))
  IF NOT has_schema_privilege(role_name, 'cron', 'USAGE')
     OR NOT has_function_privilege(role_name, 'cron.schedule(text,text,text)', 'EXECUTE')
     OR NOT has_function_privilege(role_name, coalesce(to_regprocedure('cron.unschedule(name)'),
                                                       to_regprocedure('cron.unschedule(text)')),
                                   'EXECUTE') THEN
    BEGIN
      EXECUTE format('GRANT USAGE ON SCHEMA cron TO %I', role_name);
      EXECUTE format('GRANT EXECUTE ON FUNCTION cron.schedule(text,text,text), %s, '
                     'cron.unschedule(bigint) TO %I',
                     coalesce(to_regprocedure('cron.unschedule(name)'),
                              to_regprocedure('cron.unschedule(text)')), role_name);
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE WARNING 'pgdispatch: % could not grant USAGE on schema cron to %', current_user, role_name
        USING HINT = format('Ask a superuser to run: GRANT USAGE ON SCHEMA cron TO %I; without it %s '
                            'cannot start workers and its dispatches fail.', role_name, role_name);
    END;
    IF NOT has_schema_privilege(role_name, 'cron', 'USAGE') THEN
      RAISE WARNING 'pgdispatch: role % has no USAGE on schema cron', role_name
        USING HINT = format('Ask a superuser to run: GRANT USAGE ON SCHEMA cron TO %I', role_name);
    END IF;
  END IF;
  IF NOT r.rolcanlogin THEN
    RAISE NOTICE 'pgdispatch: role % cannot log in: it can dispatch only through SECURITY DEFINER '
                 'functions or definer dispatch triggers owned by a login role', role_name;
  END IF;
END
$$;

CREATE FUNCTION pgdispatch.revoke_usage(role_name name) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
    RAISE EXCEPTION 'pgdispatch: role % does not exist', role_name USING ERRCODE = 'undefined_object';
  END IF;
  EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA pgdispatch FROM %I', role_name);
  EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA pgdispatch FROM %I', role_name);
  EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgdispatch FROM %I', role_name);
  EXECUTE format('REVOKE ALL ON ALL PROCEDURES IN SCHEMA pgdispatch FROM %I', role_name);
  EXECUTE format('REVOKE ALL ON SCHEMA pgdispatch FROM %I', role_name);
END
$$;

CREATE FUNCTION pgdispatch.version() RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT value FROM pgdispatch.meta WHERE key = 'version';
$$;

-- Checks before uninstalling; raises unless force. Unschedules the pg_cron jobs it can.
CREATE FUNCTION pgdispatch.prepare_uninstall(force boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  unfinished bigint;
  triggers text;
  others text;
  superuser boolean := (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
  jid bigint;
BEGIN
  SELECT count(*) INTO unfinished FROM pgdispatch.job;
  IF unfinished > 0 AND NOT force THEN
    RAISE EXCEPTION 'pgdispatch: % unfinished job(s) are queued or running; refusing to uninstall',
      unfinished
      USING ERRCODE = 'object_in_use',
            HINT = 'Let the workers drain the queue (or cancel the jobs), or uninstall with force.';
  END IF;
  SELECT string_agg(format('%s on %s', t.tgname, t.tgrelid::regclass), ', ') INTO triggers
    FROM pg_trigger t
   WHERE NOT t.tgisinternal
     AND (t.tgfoid = 'pgdispatch.trigger()'::regprocedure
          OR t.tgfoid IN (SELECT fn FROM pgdispatch.definer_function));
  IF triggers IS NOT NULL AND NOT force THEN
    RAISE EXCEPTION 'pgdispatch: dispatch triggers still use pgdispatch: %', triggers
      USING ERRCODE = 'dependent_objects_still_exist',
            HINT = 'Drop them first, or uninstall with force (which drops them).';
  END IF;
  IF superuser THEN
    FOR jid IN SELECT j.jobid FROM cron.job j WHERE j.jobname LIKE 'pgdispatch:%'
                 AND j.command LIKE 'CALL pgdispatch.%' LOOP
      PERFORM cron.unschedule(jid);
    END LOOP;
  ELSE
    SELECT string_agg(w.role, ', ') INTO others FROM pgdispatch.worker w
     WHERE w.role <> current_user AND w.enabled;
    IF others IS NOT NULL THEN
      RAISE EXCEPTION 'pgdispatch: roles % still have pg_cron workers that only they (or a '
                      'superuser) can unschedule', others
        USING ERRCODE = 'object_in_use',
              HINT = 'Run SELECT pgdispatch.stop() as each of them, or uninstall as a superuser.';
    END IF;
    FOR jid IN SELECT j.jobid FROM cron.job j WHERE j.jobname LIKE 'pgdispatch:%'
                 AND j.username = current_user LOOP
      PERFORM cron.unschedule(jid);
    END LOOP;
  END IF;
  -- workers still running exit now instead of failing on the dropped schema
  UPDATE pgdispatch.worker SET enabled = false;
  FOR jid IN SELECT DISTINCT l.pid FROM pg_locks l
              WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
                AND l.classid::bigint BETWEEN 1885824113 AND 1885824113 + 16
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND l.pid <> pg_backend_pid() LOOP
    BEGIN
      PERFORM pg_terminate_backend(jid::integer);
    EXCEPTION WHEN insufficient_privilege THEN
      NULL;  -- another role's worker: it exits within a second (enabled = false)
    END;
  END LOOP;
  -- the SECURITY DEFINER trigger functions made in users' schemas
  FOR jid IN SELECT fn::oid::bigint FROM pgdispatch.definer_function LOOP
    EXECUTE format('DROP FUNCTION IF EXISTS %s CASCADE', jid::oid::regprocedure);
  END LOOP;
END
$$;

-- Only the installing role (and whom grant_usage() names) may use pgdispatch.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgdispatch FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA pgdispatch FROM PUBLIC;
