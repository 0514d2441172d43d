-- pgdispatch 0.2.0: asynchronous SQL side effects inside PostgreSQL, driven by pg_cron.
--
-- Plain SQL and PL/pgSQL only (TLE-compliant): no C, no file access, no superuser at
-- run time. Installed by sa_pgdispatch.install() or with psql:
--   psql -v ON_ERROR_STOP=1 -1 -f sql/pgdispatch--0.2.0.sql
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
--   effects: a crash rolls back both and the job runs again, never twice. Every job runs
--   as in a fresh session (settings, role, temp objects, prepared statements, LISTEN,
--   advisory locks, sequence state, cursors and deferred constraints are reset after it).
-- * Idle workers watch the job id sequence and claim only after a dispatch (for
--   settings.claim_window), when a delayed job falls due, or once a second.
-- * A running job is marked by a transaction advisory lock (classid 1885824110, objid =
--   low 32 bits of the job id, objsubid 2) held by its worker until it commits the outcome.
-- * Rows belong to a role's oid (role_id, a regrole), not to its name: a renamed role
--   keeps its jobs, a dropped role's jobs never run (repair_roles()).
--
-- This is the full script of the current version; pgdispatch--<a>--<b>.sql scripts
-- upgrade an installed older version step by step and end in the same catalog.

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
INSERT INTO pgdispatch.meta VALUES ('version', '0.2.0');

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
  CHECK (poll_max >= poll_min),
  prune_interval   interval NOT NULL DEFAULT '10 seconds' CHECK (prune_interval > '0'),
  claim_window     interval NOT NULL DEFAULT '100 milliseconds' CHECK (claim_window >= '0'),
  batch_wait       interval NOT NULL DEFAULT '1 millisecond'
    CHECK (batch_wait >= '0' AND batch_wait <= '1 second'),
  worker_synchronous_commit text NOT NULL DEFAULT 'off'
    CHECK (worker_synchronous_commit IN ('on', 'off', 'local', 'remote_write', 'remote_apply'))
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
  last_error   jsonb,
  role_id      regrole     NOT NULL DEFAULT to_regrole(quote_ident(current_user))
);
-- Rows belong to a role, not to its name: role_id is the role's oid as a regrole (pg_dump
-- writes it as the role's name and a restore looks that name up again: restore the roles
-- first; pg_upgrade keeps role oids). The name columns hold the name at the time of the
-- write, shown for roles that no longer exist. docs/operations.md#role-lifecycle
-- A job's role is its writer's: a role with pgdispatch's usage may not write a job's role
-- or role_id (grant_usage() grants INSERT on the other columns only: their defaults
-- apply), nor make row level security (below) let it through; that binds BYPASSRLS roles
-- too. The owner and superusers may write any row.
CREATE INDEX job_claim ON pgdispatch.job (role_id, priority DESC, run_at, id);
CREATE UNIQUE INDEX job_key_queued ON pgdispatch.job (role_id, job_key) WHERE job_key IS NOT NULL;
-- Autovacuum of the queue by its dead rows alone: every finished job leaves a dead row
-- (and dead entries at the head of job_claim, which every claim steps over until vacuum
-- removes them). The default, 20% of the table, let 200,000 pile up over a backlog of
-- 1,000,000 (a claim read 3,000-4,000 buffers instead of about 200). Its inserts need no
-- vacuum of their own: every one is deleted soon after. The history keeps the defaults:
-- prune() deletes from the head of its index once per pass, not once per job, and a
-- history of 7 days of jobs is too large to vacuum every 10,000 rows.
ALTER TABLE pgdispatch.job SET (autovacuum_vacuum_scale_factor = 0,
                                autovacuum_vacuum_threshold = 10000);

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
  error         jsonb,
  role_id       regrole     NOT NULL DEFAULT to_regrole(quote_ident(current_user))
);
CREATE INDEX job_history_role_finished ON pgdispatch.job_history (role_id, finished_at);

-- Cancellation requests for running jobs; the watchdog signals their workers.
CREATE TABLE pgdispatch.cancel_request (
  job_id       bigint      PRIMARY KEY,
  role         name        NOT NULL DEFAULT current_user,
  requested_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  role_id      regrole     NOT NULL DEFAULT to_regrole(quote_ident(current_user))
);

-- One row per role that has (or had) workers. enabled = false after stop(): dispatching
-- keeps queueing but nothing restarts the workers until start().
CREATE TABLE pgdispatch.worker (
  role       name        NOT NULL DEFAULT current_user,
  workers    integer     NOT NULL CHECK (workers BETWEEN 1 AND 16),
  enabled    boolean     NOT NULL,
  schedule   text,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  role_id    regrole     PRIMARY KEY DEFAULT to_regrole(quote_ident(current_user))
);
-- A worker row is its role's own: roles with pgdispatch's usage may not write role_id
-- (column privileges, granted by grant_usage(), as for the queue). A CHECK constraint
-- would bind a superuser who restores a dump too.

-- SECURITY DEFINER copies of pgdispatch.trigger() made by definer_trigger_function().
CREATE TABLE pgdispatch.definer_function (
  fn         regprocedure PRIMARY KEY,
  owner      name         NOT NULL DEFAULT current_user,
  created_at timestamptz  NOT NULL DEFAULT clock_timestamp()
);

-- Row level security: every role reads and writes its own rows only. The installing
-- role (the owner) is trusted like an extension owner: it owns the code that runs.
-- By role_id: pg_has_role(role_id, 'USAGE'), the role itself or a role whose privileges
-- it has (and may SET ROLE to: nothing it could not read or write anyway). It costs next
-- to nothing per row and needs no per-statement set-up. It is not an index condition: as
-- `role = current_user` the planner chose the claim index (role first) for statements
-- that address rows by ctid or id, a scan of the role's whole backlog in every batch.
-- Workers, cancel(), prune() and the jobs view compare role_id with the role's own oid.
-- A cancellation request names a job of its own role; definer_function records only the
-- role's own pgdispatch_definer_trigger copies.
ALTER TABLE pgdispatch.job ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgdispatch.job_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgdispatch.cancel_request ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgdispatch.worker ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgdispatch.definer_function ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_jobs ON pgdispatch.job
  USING (pg_has_role(role_id, 'USAGE')) WITH CHECK (pg_has_role(role_id, 'USAGE'));
CREATE POLICY own_history ON pgdispatch.job_history
  USING (pg_has_role(role_id, 'USAGE')) WITH CHECK (pg_has_role(role_id, 'USAGE'));
CREATE POLICY own_requests ON pgdispatch.cancel_request
  USING (pg_has_role(role_id, 'USAGE'))
  WITH CHECK (pg_has_role(role_id, 'USAGE')
              AND EXISTS (SELECT 1 FROM pgdispatch.job q
                           WHERE q.id = job_id AND q.role_id = cancel_request.role_id));
CREATE POLICY own_worker ON pgdispatch.worker
  USING (pg_has_role(role_id, 'USAGE')) WITH CHECK (pg_has_role(role_id, 'USAGE'));
CREATE POLICY own_functions ON pgdispatch.definer_function
  USING (owner = current_user)
  WITH CHECK (owner = current_user
              AND EXISTS (SELECT 1 FROM pg_proc p
                           WHERE p.oid = fn AND p.proname = 'pgdispatch_definer_trigger'
                             AND p.prosecdef
                             AND p.proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)));
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
-- job; (1885824113 + slot, role oid) is a worker slot; slot 0 is the watchdog;
-- (1885824130, role oid) is stop()'s gate (_stop_gate()).
-- (0.1.0 called it _lock_key: the upgrade renamed it, so that a worker still running
-- 0.1.0's work() fails right after its next claim, before it runs a job. work() calls it
-- after each claim, before each job's command: a later upgrade that running workers of
-- this version could not follow stops them the same way, by renaming it.)
CREATE FUNCTION pgdispatch._advisory_key(id bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT ((id & 4294967295) - CASE WHEN (id & 4294967295) > 2147483647 THEN 4294967296 ELSE 0 END)::integer
$$;

CREATE FUNCTION pgdispatch._role_key() RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT pgdispatch._advisory_key((SELECT oid::bigint FROM pg_roles WHERE rolname = current_user))
$$;

-- Is the current role an administrator of pgdispatch (member of the schema owner)?
CREATE FUNCTION pgdispatch._is_admin() RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT pg_has_role(current_user,
                   (SELECT nspowner FROM pg_namespace WHERE nspname = 'pgdispatch'), 'MEMBER')
$$;

-- The database pg_cron runs in. cron.database_name is readable by superusers (and
-- pg_read_all_settings) only, but pg_cron's launcher is a background worker connected to
-- that database, and every role sees its row in pg_stat_activity.
CREATE FUNCTION pgdispatch._cron_database() RETURNS name
LANGUAGE sql STABLE AS $$
  -- (backend_type is hidden from roles without pg_read_all_stats; the launcher's
  -- application name is not)
  SELECT a.datname FROM pg_stat_activity a
   WHERE (a.backend_type = 'pg_cron launcher' OR a.application_name = 'pg_cron scheduler')
     AND a.datname IS NOT NULL
   LIMIT 1
$$;

-- pg_cron facts. In a database other than pg_cron's (an app database whose workers are
-- scheduled with cron.schedule_in_database()), version and the others are NULL and
-- database_name names pg_cron's database. pg_cron's settings are readable by superusers
-- and pg_read_all_settings only: this runs as pgdispatch's owner, so that the owner's
-- view answers for every role; when it cannot read them either, background_workers comes
-- from the backend types of running pg_cron jobs (NULL when none shows).
CREATE FUNCTION pgdispatch.cron_info(
  OUT version text, OUT major integer, OUT minor integer,
  OUT second_schedules boolean, OUT background_workers boolean, OUT database_name text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  SELECT e.extversion INTO version FROM pg_extension e WHERE e.extname = 'pg_cron';
  BEGIN
    database_name := current_setting('cron.database_name', true);
  EXCEPTION WHEN insufficient_privilege THEN
    database_name := NULL;
  END;
  database_name := coalesce(database_name, pgdispatch._cron_database(),
                            CASE WHEN version IS NOT NULL THEN current_database() END);
  IF version IS NULL THEN
    IF database_name IS NULL OR database_name = current_database() THEN
      RAISE EXCEPTION 'pg_cron is not installed in this database' USING ERRCODE = 'feature_not_supported',
        HINT = 'Add pg_cron to shared_preload_libraries, restart PostgreSQL and run CREATE '
               'EXTENSION pg_cron in the database named by cron.database_name.';
    END IF;
    RETURN;  -- pg_cron runs in another database: its version is not known here
  END IF;
  major := split_part(version, '.', 1)::integer;
  minor := (regexp_match(split_part(version, '.', 2), '^[0-9]+'))[1]::integer;
  second_schedules := (major, minor) >= (1, 5);
  BEGIN
    background_workers := coalesce(current_setting('cron.use_background_workers', true), 'off') = 'on';
  EXCEPTION WHEN insufficient_privilege THEN
    background_workers := CASE WHEN EXISTS (SELECT 1 FROM pg_stat_activity a
                                             WHERE a.backend_type = 'pg_cron')
                               THEN true
                               WHEN EXISTS (SELECT 1 FROM pg_stat_activity a
                                             WHERE a.application_name = 'pg_cron'
                                               AND a.backend_type = 'client backend')
                               THEN false END;
  END;
END
$$;

-- The shape of an SQL string: how many statements it holds, and where its last one ends
-- (content_end: the length in UTF-8 bytes up to the end of the last token that is not a
-- blank, a comment or a ';'). A small lexer that knows quotes, dollar quotes, E'' strings,
-- identifiers and comments.
CREATE FUNCTION pgdispatch._sql_shape(sql text, OUT statements integer, OUT content_end integer)
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
  b bytea := convert_to(sql, 'UTF8');
  n integer := length(b);
  i integer := 0;
  c integer;
  depth integer;
  tag bytea;
  j integer;
  content boolean := false;   -- the current statement has a token besides blanks and comments
BEGIN
  statements := 0;
  content_end := 0;
  WHILE i < n LOOP
    c := get_byte(b, i);
    IF c = 59 THEN                                   -- ;
      IF content THEN statements := statements + 1; END IF;
      content := false; i := i + 1; CONTINUE;
    ELSIF c IN (32, 9, 10, 13, 12) THEN              -- blanks
      i := i + 1; CONTINUE;
    ELSIF c = 45 AND i + 1 < n AND get_byte(b, i + 1) = 45 THEN       -- -- comment
      i := i + 2;
      WHILE i < n AND get_byte(b, i) <> 10 LOOP i := i + 1; END LOOP;
      CONTINUE;
    ELSIF c = 47 AND i + 1 < n AND get_byte(b, i + 1) = 42 THEN       -- /* comment */
      depth := 1; i := i + 2;
      WHILE i < n AND depth > 0 LOOP
        IF get_byte(b, i) = 47 AND i + 1 < n AND get_byte(b, i + 1) = 42 THEN
          depth := depth + 1; i := i + 2;
        ELSIF get_byte(b, i) = 42 AND i + 1 < n AND get_byte(b, i + 1) = 47 THEN
          depth := depth - 1; i := i + 2;
        ELSE i := i + 1; END IF;
      END LOOP;
      IF depth > 0 THEN                               -- unterminated: kept (an error)
        content := true; content_end := n;
      END IF;
      CONTINUE;
    END IF;
    content := true;
    IF c = 39 THEN                                    -- 'string' ('' escapes; E'' below)
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
    content_end := least(i, n);
  END LOOP;
  IF content THEN statements := statements + 1; END IF;
END
$$;

-- How many statements does an SQL string hold (_sql_shape())? Used only when a command
-- that is given a payload contains a ';' before its end; a comment after the last ';'
-- is not a statement.
CREATE FUNCTION pgdispatch._statement_count(sql text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT (pgdispatch._sql_shape(sql)).statements
$$;

-- A command without what follows its last statement: ';', blanks and comments. The body
-- that the capturing wrapper (WITH pgdispatch_q AS (<body>) ...) takes ('SELECT 42 AS
-- answer; -- note' captures its row).
CREATE FUNCTION pgdispatch._command_body(sql text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
  b bytea;
  e integer;
BEGIN
  IF strpos(sql, '--') = 0 AND strpos(sql, '/*') = 0 THEN
    -- no comment: a trailing ';' is never part of a (complete) token
    RETURN rtrim(sql, E' \t\r\n\f;');
  END IF;
  e := (pgdispatch._sql_shape(sql)).content_end;
  b := convert_to(sql, 'UTF8');
  IF e >= length(b) THEN
    RETURN sql;
  END IF;
  RETURN convert_from(substring(b FROM 1 FOR e), 'UTF8');
END
$$;

-- The INITIALLY DEFERRED constraints (and constraint triggers) of the database, as a list
-- for SET CONSTRAINTS: work() defers them again after each job (NULL: none).
CREATE FUNCTION pgdispatch._deferred_constraints() RETURNS text
-- (PL/pgSQL, whose plans a session keeps: as a SQL function its query was parsed and
-- planned at every call, once a second in every worker, idle or not)
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN (SELECT string_agg(format('%I.%I', n.nspname, c.conname), ', ' ORDER BY n.nspname, c.conname)
            FROM (SELECT DISTINCT x.connamespace, x.conname FROM pg_constraint x WHERE x.condeferred) c
            JOIN pg_namespace n ON n.oid = c.connamespace);
END
$$;

-- Release the session-level advisory locks of this backend that are not in keep (entries
-- 'classid/objid/objsubid/mode' of pg_locks): what a job took, when work() drains in a
-- session that held advisory locks of its own (the common case is pg_advisory_unlock_all()).
-- The running-job locks of the batch (classid 1885824110) and its hold on stop()'s gate
-- (classid 1885824130) are transaction-level and left.
CREATE FUNCTION pgdispatch._release_advisory_locks(keep text[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  l record;
  hi integer;
  lo integer;
BEGIN
  FOR l IN
    SELECT x.classid, x.objid, x.objsubid, x.mode = 'ShareLock' AS shared
      FROM pg_locks x
     WHERE x.locktype = 'advisory' AND x.pid = pg_backend_pid() AND x.granted
       AND x.objsubid IN (1, 2)
       AND NOT format('%s/%s/%s/%s', x.classid, x.objid, x.objsubid, x.mode) = ANY (keep)
       AND NOT (x.classid IN (1885824110::oid, 1885824130::oid) AND x.objsubid = 2)
  LOOP
    hi := pgdispatch._advisory_key(l.classid::bigint);
    lo := pgdispatch._advisory_key(l.objid::bigint);
    -- once per time it was taken (a lock the job took at transaction level only is
    -- released by the batch's commit: its unlock returns false, with a WARNING)
    LOOP
      EXIT WHEN NOT CASE WHEN l.objsubid = 1 AND l.shared
                           THEN pg_advisory_unlock_shared((l.classid::bigint << 32) | l.objid::bigint)
                         WHEN l.objsubid = 1
                           THEN pg_advisory_unlock((l.classid::bigint << 32) | l.objid::bigint)
                         WHEN l.shared THEN pg_advisory_unlock_shared(hi, lo)
                         ELSE pg_advisory_unlock(hi, lo) END;
      EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_locks x
                             WHERE x.locktype = 'advisory' AND x.pid = pg_backend_pid()
                               AND x.granted AND x.classid = l.classid AND x.objid = l.objid
                               AND x.objsubid = l.objsubid
                               AND (x.mode = 'ShareLock') = l.shared);
    END LOOP;
  END LOOP;
END
$$;

-- Make sure the calling role has workers, once per session and role. Raises a clear
-- error for roles that cannot run a worker (NOLOGIN), and, in an app database apart from
-- pg_cron's, for roles whose workers were never started from there. A role renamed since
-- its workers were scheduled gets them again under its new name.
CREATE FUNCTION pgdispatch._ensure_worker() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  info record;
  w record;
  known boolean;
BEGIN
  SELECT x.role, x.enabled INTO w FROM pgdispatch.worker x
   WHERE x.role_id = to_regrole(quote_ident(current_user));
  known := FOUND;
  IF known AND w.enabled AND w.role <> current_user THEN
    IF (SELECT version FROM pgdispatch.cron_info()) IS NOT NULL THEN
      PERFORM pgdispatch.start();
    ELSE
      RAISE WARNING 'pgdispatch: role % was called % when its workers for database % were '
                    'scheduled: they no longer run', current_user, w.role, current_database()
        USING HINT = 'Run the statements of SELECT * FROM pgdispatch.cron_statements(''start'') '
                     'in pg_cron''s database again (sa_pgdispatch.start_workers(conn, '
                     'cron_url=...)). See docs/operations.md#role-lifecycle.';
    END IF;
  END IF;
  IF NOT known THEN
    info := pgdispatch.cron_info();
    IF info.version IS NULL THEN
      PERFORM pgdispatch._check_can_login();
      RAISE EXCEPTION 'pgdispatch: role % has no workers for database %, and they can only be '
                      'started from pg_cron''s database %', current_user, current_database(),
                      info.database_name
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = format('Connected to %s as %s, run the statements that SELECT * FROM '
                            'pgdispatch.cron_statements(''start'') returns here (from Python: '
                            'sa_pgdispatch.start_workers(conn, cron_url=...)).',
                            info.database_name, current_user);
    END IF;
    PERFORM pgdispatch.start();
  END IF;
  PERFORM set_config('pgdispatch.worker_checked', current_user || ':' || 'pgdispatch'::regnamespace::oid, false);
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
  IF octet_length(job_key) > 1000 THEN
    -- (the unique index on (role, job_key) takes keys up to about 2,700 bytes, and failed
    -- beyond with "index row size ... exceeds btree version 4 maximum")
    RAISE EXCEPTION 'pgdispatch: job_key must be at most 1000 bytes (got %)', octet_length(job_key)
      USING ERRCODE = 'string_data_right_truncation',
            HINT = 'Use a digest of a longer key, e.g. job_key => md5(<key>).';
  END IF;
  IF current_setting('pgdispatch.worker_checked', true)
     IS DISTINCT FROM current_user || ':' || 'pgdispatch'::regnamespace::oid THEN
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
    ON CONFLICT (role_id, job_key) WHERE job_key IS NOT NULL DO NOTHING
    RETURNING j.id INTO job_id;
    IF job_id IS NULL THEN
      -- the same key is queued (or running): that job stands for this one. (Planned at
      -- each call: a plan cached while the queue was small could scan it once it is not.)
      EXECUTE 'SELECT j.id FROM pgdispatch.job j '
              'WHERE j.role_id = to_regrole(quote_ident(current_user)) AND j.job_key = $1'
        INTO job_id USING dispatch.job_key;
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

-- A job is running from its claim until its worker commits the outcome. role is the
-- role's current name (after a rename, the new one; of a dropped role, the name it had).
CREATE VIEW pgdispatch.jobs WITH (security_barrier) AS
SELECT j.id, coalesce((SELECT r.rolname FROM pg_roles r WHERE r.oid = j.role_id), j.role) AS role,
       j.command, j.payload,
       CASE WHEN l.pid IS NULL THEN 'queued' ELSE 'running' END AS state,
       j.attempts, j.max_attempts, j.priority, j.job_key, j.timeout, j.capture,
       j.created_at, j.run_at,
       NULL::timestamptz AS started_at, NULL::timestamptz AS finished_at,
       NULL::jsonb AS result, NULL::bigint AS rows_affected, j.last_error AS error,
       l.pid AS worker_pid
  FROM pgdispatch.job j
  LEFT JOIN pg_locks l
    ON l.locktype = 'advisory' AND l.classid = 1885824110::oid AND l.objsubid = 2
   AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.objid::bigint = (j.id & 4294967295)
 WHERE j.role_id = (SELECT to_regrole(quote_ident(current_user))) OR (SELECT pgdispatch._is_admin())
UNION ALL
SELECT h.id, coalesce((SELECT r.rolname FROM pg_roles r WHERE r.oid = h.role_id), h.role),
       h.command, h.payload, h.state,
       h.attempts, h.max_attempts, h.priority, h.job_key, h.timeout, h.capture,
       h.created_at, h.run_at, h.started_at, h.finished_at,
       h.result, h.rows_affected, h.error, NULL::integer
  FROM pgdispatch.job_history h
 WHERE h.role_id = (SELECT to_regrole(quote_ident(current_user))) OR (SELECT pgdispatch._is_admin());
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
     AND (h.role_id = to_regrole(quote_ident(current_user)) OR (SELECT pgdispatch._is_admin()));
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
  me regrole := to_regrole(quote_ident(current_user));
BEGIN
  SELECT * INTO victim FROM pgdispatch.job j
   WHERE j.id = cancel.job_id AND j.role_id = me
     FOR UPDATE SKIP LOCKED;
  IF FOUND THEN
    DELETE FROM pgdispatch.job j WHERE j.id = victim.id;
    INSERT INTO pgdispatch.job_history
           (id, role, role_id, command, payload, state, priority, attempts, max_attempts,
            timeout, capture, job_key, created_at, run_at, finished_at, error)
    VALUES (victim.id, victim.role, victim.role_id, victim.command, victim.payload, 'cancelled',
            victim.priority, victim.attempts, victim.max_attempts, victim.timeout, victim.capture,
            victim.job_key, victim.created_at, victim.run_at, clock_timestamp(),
            victim.last_error);
    RETURN true;
  END IF;
  IF EXISTS (SELECT 1 FROM pgdispatch.job j WHERE j.id = cancel.job_id AND j.role_id = me) THEN
    INSERT INTO pgdispatch.cancel_request (job_id) VALUES (cancel.job_id) ON CONFLICT DO NOTHING;
    RETURN true;
  END IF;
  IF EXISTS (SELECT 1 FROM pgdispatch.job_history h
              WHERE h.id = cancel.job_id AND h.role_id = me) THEN
    RETURN false;
  END IF;
  RAISE EXCEPTION 'pgdispatch: job % does not exist or belongs to another role', job_id
    USING ERRCODE = 'no_data_found';
END
$$;

-- ---------------------------------------------------------------------------------------
-- pg_cron 1.5 and later, background-worker mode, and app databases apart from pg_cron's
-- ---------------------------------------------------------------------------------------

-- A role that cannot log in cannot have workers: pg_cron runs a job as the role that
-- scheduled it, in a session of its own.
CREATE FUNCTION pgdispatch._check_can_login() RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF NOT (SELECT rolcanlogin FROM pg_roles WHERE rolname = current_user) THEN
    RAISE EXCEPTION 'pgdispatch: role % cannot log in, so no pg_cron worker can run its jobs',
      current_user
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'Dispatch from a SECURITY DEFINER function or trigger owned by a role that can '
                   'log in (e.g. a dispatch trigger with security => definer); the job then runs '
                   'as that owner.';
  END IF;
END
$$;

-- The number of workers start() uses: the argument, else the role's current number, else
-- settings.default_workers.
CREATE FUNCTION pgdispatch._worker_count(workers integer) RETURNS integer
LANGUAGE plpgsql STABLE AS $$
DECLARE
  n integer;
BEGIN
  SELECT coalesce(workers, (SELECT w.workers FROM pgdispatch.worker w
                             WHERE w.role_id = to_regrole(quote_ident(current_user))),
                  (SELECT default_workers FROM pgdispatch.settings))
    INTO n;
  IF n < 1 OR n > 16 THEN
    RAISE EXCEPTION 'pgdispatch: workers must be between 1 and 16 (got %)', n
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN n;
END
$$;

-- Background workers: in pg_cron's background-worker mode every running pg_cron job,
-- pgdispatch's long-lived workers and watchdogs included, holds one of
-- max_worker_processes (shared with pg_cron's launcher, parallel query and logical
-- replication). used counts the background workers alive now, pgdispatch_workers those
-- of them that run pgdispatch, and free is what is left; max_running_jobs is pg_cron's
-- own limit. Each is NULL when it cannot be known: other sessions' backend types are
-- visible to superusers and members of pg_read_all_stats only, and pg_cron's settings to
-- superusers and pg_read_all_settings. scheduled counts the workers and watchdogs that
-- pg_cron has scheduled, every role's: all of pg_cron's when pgdispatch's owner may see
-- every role's pg_cron jobs (_manages_cron()), else those of this database's roles that
-- start() scheduled. (Counts only: it runs as pgdispatch's owner, so that an owner who may
-- see them answers for every role.)
CREATE FUNCTION pgdispatch.worker_budget(
  OUT max_worker_processes integer, OUT used integer, OUT free integer,
  OUT pgdispatch_workers integer, OUT max_running_jobs integer, OUT scheduled integer)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  max_worker_processes := current_setting('max_worker_processes')::integer;
  IF NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.backend_type IS NULL) THEN
    -- background workers show their own backend type; these are PostgreSQL's other kinds
    SELECT count(*),
           count(*) FILTER (WHERE a.backend_type = 'pg_cron' AND a.query LIKE 'CALL pgdispatch.%')
      INTO used, pgdispatch_workers
      FROM pg_stat_activity a
     WHERE a.backend_type NOT IN ('client backend', 'autovacuum launcher', 'autovacuum worker',
                                  'archiver', 'background writer', 'checkpointer', 'startup',
                                  'walreceiver', 'walsender', 'walwriter', 'standalone backend',
                                  'logger', 'walsummarizer', 'slotsync worker', 'io worker',
                                  'dead-end client backend', 'not initialized');
    free := greatest(max_worker_processes - used, 0);
  END IF;
  BEGIN
    max_running_jobs := current_setting('cron.max_running_jobs', true)::integer;
  EXCEPTION WHEN insufficient_privilege THEN
    max_running_jobs := NULL;
  END;
  IF pgdispatch._manages_cron() THEN
    SELECT count(*) INTO scheduled FROM cron.job j
     WHERE j.jobname LIKE 'pgdispatch:%' AND j.command LIKE 'CALL pgdispatch.%' AND j.active;
  ELSE
    SELECT coalesce(sum(w.workers + 1), 0) INTO scheduled FROM pgdispatch.worker w
     WHERE w.enabled AND w.schedule IS NOT NULL;
  END IF;
END
$$;

-- Refuse to start workers that could not all run at once: in background-worker mode each
-- of the role's n workers and its watchdog holds a background worker and one of pg_cron's
-- cron.max_running_jobs for as long as it lives, beside the workers and watchdogs pg_cron
-- has scheduled for other roles (worker_budget().scheduled: scheduled, not running now,
-- which dips while workers hand over). The role's own scheduled workers are replaced, not
-- added. Over-subscribed, pg_cron starts some of them only when others end (a role went
-- without workers for a minute, or without its watchdog).
CREATE FUNCTION pgdispatch._check_worker_budget(n integer) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
  b record;
  mine integer;
  others integer;
  avail integer;
  cron_limit integer;
BEGIN
  b := pgdispatch.worker_budget();
  IF pgdispatch._manages_cron() THEN
    SELECT count(*) INTO mine FROM cron.job j
     WHERE j.username = current_user AND j.database = current_database()
       AND j.jobname LIKE 'pgdispatch:%' AND j.command LIKE 'CALL pgdispatch.%' AND j.active;
  ELSE
    SELECT coalesce(sum(w.workers + 1), 0) INTO mine FROM pgdispatch.worker w
     WHERE w.role_id = to_regrole(quote_ident(current_user)) AND w.enabled
       AND w.schedule IS NOT NULL;
  END IF;
  others := greatest(b.scheduled - mine, 0);
  IF b.free IS NULL THEN
    RAISE NOTICE 'pgdispatch: cannot check that % worker(s) and a watchdog fit in '
                 'max_worker_processes = %: other sessions'' backend types are hidden from %',
                 n, b.max_worker_processes, (SELECT nspowner::regrole FROM pg_namespace
                                             WHERE nspname = 'pgdispatch')
      USING HINT = 'GRANT pg_read_all_stats to pgdispatch''s owner for this check.';
  ELSE
    -- what other background workers (pg_cron's launcher, logical replication, parallel
    -- query) leave, less what the other roles' scheduled workers hold
    avail := b.max_worker_processes - (b.used - b.pgdispatch_workers) - others;
    IF n + 1 > avail THEN
      RAISE EXCEPTION 'pgdispatch: % more background worker(s) needed for % worker(s) and a '
                      'watchdog of role %, but only % of max_worker_processes = % are free '
                      '(% are other roles'' scheduled pgdispatch workers)',
        n + 1, n, current_user, greatest(avail, 0), b.max_worker_processes, others
        USING ERRCODE = 'configuration_limit_exceeded',
              HINT = 'pg_cron runs in background-worker mode (cron.use_background_workers = on), '
                     'where every long-lived pgdispatch worker and watchdog holds a background '
                     'worker. Raise max_worker_processes (a restart; leave room for parallel query '
                     'and logical replication), start fewer workers, or stop another role''s '
                     'workers. See docs/operations.md#background-worker-mode.';
    END IF;
  END IF;
  -- pg_cron runs at most cron.max_running_jobs jobs at once, and no more than
  -- max_worker_processes - 1 in this mode
  cron_limit := least(b.max_running_jobs, b.max_worker_processes - 1);
  IF cron_limit IS NOT NULL AND others + n + 1 > cron_limit THEN
    RAISE EXCEPTION 'pgdispatch: % worker(s) and a watchdog of role % would exceed '
                    'cron.max_running_jobs = % (pg_cron has % other pgdispatch worker(s) and '
                    'watchdog(s) scheduled)',
      n, current_user, cron_limit, others
      USING ERRCODE = 'configuration_limit_exceeded',
            HINT = 'Raise cron.max_running_jobs (and max_worker_processes, which caps it; a '
                   'restart), start fewer workers, or stop another role''s workers. See '
                   'docs/operations.md#background-worker-mode.';
  END IF;
END
$$;

-- The error for start()/stop() in a database that is not pg_cron's.
CREATE FUNCTION pgdispatch._raise_cron_elsewhere(cron_database text, action text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RAISE EXCEPTION 'pgdispatch: pg_cron runs in database %, not in %: this database''s workers '
                  'are scheduled there', cron_database, current_database()
    USING ERRCODE = 'feature_not_supported',
          HINT = format('Connected to %s as %s, run the statements that '
                        'SELECT * FROM pgdispatch.cron_statements(%L) returns here (from Python: '
                        'sa_pgdispatch.%s_workers(conn, cron_url=...); the CLI: --cron-url). '
                        'They call cron.schedule_in_database(), whose EXECUTE an administrator '
                        'grants once: GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text, '
                        'text, text, text, text, boolean) TO %s.',
                        cron_database, current_user, action, action, current_user);
END
$$;

-- The pg_cron job name of a worker slot (or 'watchdog') of the calling role for this
-- database, when its workers are scheduled from pg_cron's database.
-- The name holds no role name (cron.job is unique on (jobname, username)) and the
-- database's oid, not its name: any role and database name fits pg_cron 1.4's 63 bytes.
CREATE FUNCTION pgdispatch._remote_job_name(slot text) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT format('pgdispatch:%s@%s', slot, (SELECT d.oid FROM pg_database d
                                             WHERE d.datname = current_database()))
$$;

-- The pg_cron job name of a worker slot (or 'watchdog') in pg_cron's own database.
CREATE FUNCTION pgdispatch._job_name(slot text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT 'pgdispatch:' || slot
$$;

-- The command of a worker slot (or 'watchdog') of the calling role. The comment records
-- the role's oid: pg_cron knows a job's role by name only, and repair_roles() uses it to
-- tell a renamed role (whose jobs follow its new name) from a dropped one.
CREATE FUNCTION pgdispatch._job_command(slot text) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT format('%s /* role %s */',
                CASE WHEN slot = 'watchdog' THEN 'CALL pgdispatch.watchdog()'
                     ELSE format('CALL pgdispatch.work(slot => %s)', slot::integer) END,
                to_regrole(quote_ident(current_user))::oid)
$$;

-- For an app database apart from pg_cron's: record what the calling role's workers
-- should be (action 'start': enabled with `workers` slots; 'stop': disabled; 'uninstall':
-- every role's, for removing pgdispatch) and return the statements that carry it out,
-- to run in pg_cron's database as the same role, in order. They schedule the workers with
-- cron.schedule_in_database() to run here (every second from pg_cron 1.5, every minute
-- on 1.4: the statements choose), and unschedule the role's other pgdispatch jobs for
-- this database.
CREATE FUNCTION pgdispatch.cron_statements(action text DEFAULT 'start', workers integer DEFAULT NULL)
RETURNS SETOF text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  info record;
  n integer;
  db text := current_database();
  names text[];
  sched constant text := '(SELECT CASE WHEN string_to_array(split_part(e.extversion, ''-'', 1), '
                         '''.'')::integer[] >= ''{1,5}'' THEN ''1 seconds'' ELSE ''* * * * *'' END '
                         'FROM pg_extension e WHERE e.extname = ''pg_cron'')';
BEGIN
  info := pgdispatch.cron_info();
  IF info.version IS NOT NULL THEN
    RAISE EXCEPTION 'pgdispatch: pg_cron runs in this database (%): use pgdispatch.start() '
                    'and pgdispatch.stop()', db
      USING ERRCODE = 'feature_not_supported';
  END IF;
  IF action = 'stop' OR action = 'uninstall' THEN
    IF action = 'stop' THEN
      -- running jobs finish first (as in stop()); from this commit on, the workers end at
      -- their next batch, before the statements unschedule them
      PERFORM pgdispatch._stop_gate(to_regrole(quote_ident(current_user)), '1 minute');
    END IF;
    INSERT INTO pgdispatch.worker AS w (workers, enabled)
    VALUES ((SELECT default_workers FROM pgdispatch.settings), false)
    ON CONFLICT (role_id) DO UPDATE SET enabled = false, updated_at = clock_timestamp();
    -- (row level security on cron.job limits a role that is not a superuser to its own)
    RETURN NEXT format('SELECT cron.unschedule(j.jobid) FROM cron.job j WHERE %sj.database = %L '
                       'AND j.jobname LIKE ''pgdispatch:%%''',
                       CASE WHEN action = 'stop' THEN 'j.username = current_user AND ' ELSE '' END,
                       db);
    RETURN;
  ELSIF action IS DISTINCT FROM 'start' THEN
    RAISE EXCEPTION 'pgdispatch: action must be start, stop or uninstall (got %)', action
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM pgdispatch._check_can_login();
  n := pgdispatch._worker_count(workers);
  INSERT INTO pgdispatch.worker AS w (workers, enabled, schedule)
  VALUES (n, true, NULL)
  ON CONFLICT (role_id) DO UPDATE SET role = excluded.role, workers = excluded.workers,
                                      enabled = true, schedule = NULL,
                                      updated_at = clock_timestamp();
  PERFORM set_config('pgdispatch.worker_checked', current_user || ':' || 'pgdispatch'::regnamespace::oid, false);
  names := ARRAY(SELECT pgdispatch._remote_job_name(s::text) FROM generate_series(1, n) s)
           || pgdispatch._remote_job_name('watchdog');
  FOR slot IN 1..n LOOP
    RETURN NEXT format('SELECT cron.schedule_in_database(%L, %s, %L, %L)',
                       names[slot], sched, pgdispatch._job_command(slot::text), db);
  END LOOP;
  RETURN NEXT format('SELECT cron.schedule_in_database(%L, %s, %L, %L)',
                     names[n + 1], sched, pgdispatch._job_command('watchdog'), db);
  RETURN NEXT format('SELECT cron.unschedule(j.jobid) FROM cron.job j WHERE j.username = current_user '
                     'AND j.database = %L AND j.jobname LIKE ''pgdispatch:%%'' '
                     'AND NOT j.jobname = ANY (%L::text[])', db, names);
END
$$;

-- ---------------------------------------------------------------------------------------
-- Workers
-- ---------------------------------------------------------------------------------------

-- The workers' pg_cron schedule. From pg_cron 1.5 every second: the first worker starts
-- within about a second of start(), and a worker that ends (its deadline, a crash) is
-- followed at once (pg_cron queues one run of an interval job that is still running when
-- it falls due, and starts it the moment the running one ends). pg_cron 1.4 has minute
-- schedules only. In an app database the schedule is chosen in pg_cron's database (see
-- cron_statements()); its workers use the minute rule for their deadline, which hands
-- over as promptly on both versions.
CREATE FUNCTION pgdispatch._worker_schedule() RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN (SELECT second_schedules FROM pgdispatch.cron_info())
            THEN '1 seconds' ELSE '* * * * *' END
$$;

-- Schedule (or re-schedule) the calling role's pg_cron workers and enable them. Their
-- names do not hold the role's name (cron.job is unique on (jobname, username)):
-- pgdispatch:1..N and pgdispatch:watchdog, whatever the role is called (pg_cron 1.4 cut
-- names longer than 63 bytes); the commands carry the role's oid, from which
-- repair_roles() tells what became of a role whose name pg_cron no longer finds.
CREATE FUNCTION pgdispatch.start(workers integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  info record;
  n integer;
  sched text;
  jid bigint;
  former name;
  resume_at timestamptz;
BEGIN
  info := pgdispatch.cron_info();
  IF info.version IS NULL THEN
    PERFORM pgdispatch._raise_cron_elsewhere(info.database_name, 'start');
  END IF;
  IF info.background_workers AND NOT info.second_schedules THEN
    RAISE EXCEPTION 'pgdispatch: pg_cron % runs jobs in background-worker mode, where one long '
                    'job blocks every other job', info.version
      USING ERRCODE = 'feature_not_supported',
            HINT = 'Set cron.use_background_workers = off (libpq mode, with cron.host and '
                   'passwordless local connections) or upgrade pg_cron to 1.5 or later.';
  END IF;
  PERFORM pgdispatch._check_can_login();
  n := pgdispatch._worker_count(workers);
  IF info.background_workers THEN
    PERFORM pgdispatch._check_worker_budget(n);
  END IF;
  sched := pgdispatch._worker_schedule();
  -- Right after stop(): pg_cron ends the stopped workers once it sees their jobs gone,
  -- within about a second of stop()'s commit, and may start another run of them before.
  -- One that found its role's workers enabled again would start a batch that pg_cron then
  -- ends (its jobs queued again as if never run): wait until 2 s after the stop.
  SELECT w.updated_at + interval '2 seconds' INTO resume_at FROM pgdispatch.worker w
   WHERE w.role_id = to_regrole(quote_ident(current_user)) AND NOT w.enabled;
  IF resume_at > clock_timestamp() THEN
    PERFORM pg_sleep(extract(epoch FROM resume_at - clock_timestamp()));
  END IF;
  -- Scheduling makes pg_cron reload its jobs, and one job of a role that no longer exists
  -- by its name stops pg_cron's launcher: fix those first (when pgdispatch's owner may)
  PERFORM pgdispatch.repair_roles();
  SELECT w.role INTO former FROM pgdispatch.worker w
   WHERE w.role_id = to_regrole(quote_ident(current_user)) AND w.enabled;
  INSERT INTO pgdispatch.worker AS w (workers, enabled, schedule)
  VALUES (n, true, sched)
  ON CONFLICT (role_id) DO UPDATE SET role = excluded.role, workers = excluded.workers,
                                      enabled = true, schedule = excluded.schedule,
                                      updated_at = clock_timestamp();
  FOR slot IN 1..n LOOP
    PERFORM cron.schedule(pgdispatch._job_name(slot::text), sched,
                          pgdispatch._job_command(slot::text));
  END LOOP;
  PERFORM cron.schedule(pgdispatch._job_name('watchdog'), sched,
                        pgdispatch._job_command('watchdog'));
  -- fewer slots than before, and the names of pgdispatch before 0.2.0
  -- (pgdispatch:<role>:<slot>)
  FOR jid IN
    SELECT j.jobid FROM cron.job j
     WHERE j.username = current_user AND j.jobname LIKE 'pgdispatch:%'
       AND j.database = current_database()
       AND NOT j.jobname = ANY (ARRAY(SELECT pgdispatch._job_name(s::text)
                                        FROM generate_series(1, n) s)
                                || pgdispatch._job_name('watchdog'))
  LOOP
    PERFORM cron.unschedule(jid);
  END LOOP;
  IF former <> current_user AND NOT pgdispatch._manages_cron() THEN
    RAISE WARNING 'pgdispatch: role % was called % when its workers were scheduled; pg_cron '
                  'cannot run its jobs of that name, and stops starting jobs while they exist',
                  current_user, former
      USING HINT = format('pgdispatch''s owner may not change other roles'' pg_cron jobs: a '
                          'superuser runs DELETE FROM cron.job WHERE username = %L AND jobname '
                          'LIKE ''pgdispatch:%%''. See docs/operations.md#role-lifecycle.', former);
  END IF;
  PERFORM set_config('pgdispatch.worker_checked', current_user || ':' || 'pgdispatch'::regnamespace::oid, false);
END
$$;

-- stop()'s gate, one per role: advisory lock (1885824130, role oid). A scheduled worker
-- holds it shared for each batch, from before its claim until the batch commits, and ends
-- when it cannot take it. Taking it exclusively waits for the batches in flight (their
-- jobs finish and their outcomes commit), and from then until the caller's transaction
-- ends no worker of the role starts another; an idle worker holds nothing that pg_cron's
-- ending it could lose. wait bounds the wait (NULL: as long as it takes; 0: not at all);
-- after it, lock_not_available and nothing stopped. (A lock wait: the deadlock detector
-- sees a job that waits for a lock of the stopping transaction.)
CREATE FUNCTION pgdispatch._stop_gate(target regrole, wait interval) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  saved text := current_setting('lock_timeout');
  key integer := pgdispatch._advisory_key(target::oid::bigint);
  running text;
BEGIN
  IF wait <= '0' THEN
    IF pg_try_advisory_xact_lock(1885824130, key) THEN
      RETURN;
    END IF;
  ELSE
    PERFORM set_config('lock_timeout',
                       CASE WHEN wait IS NULL THEN '0'  -- (no timeout)
                            ELSE greatest(1, ceil(extract(epoch FROM wait) * 1000))::bigint::text
                       END, true);
    BEGIN
      PERFORM pg_advisory_xact_lock(1885824130, key);
      PERFORM set_config('lock_timeout', saved, true);
      RETURN;
    EXCEPTION WHEN lock_not_available THEN
      PERFORM set_config('lock_timeout', saved, true);
    END;
  END IF;
  SELECT string_agg(j.id::text, ', ' ORDER BY j.id) INTO running
    FROM pgdispatch.jobs j
   WHERE j.state = 'running' AND j.role = (SELECT r.rolname FROM pg_roles r WHERE r.oid = target);
  RAISE EXCEPTION 'pgdispatch: the workers of role % still run job(s) % after %: stopping '
                  'lets running jobs finish', target, coalesce(running, '(unknown)'), wait
    USING ERRCODE = 'lock_not_available',
          HINT = 'Nothing was stopped. Wait longer (pgdispatch.stop(wait => ''10 minutes''), '
                 'NULL: as long as it takes), or cancel those jobs first (pgdispatch.cancel(id): '
                 'they end as cancelled). The stopping transaction must not hold locks those '
                 'jobs wait for. See docs/operations.md#stopping-workers.';
END
$$;

-- Stop the calling role's workers: wait (up to wait; NULL: as long as it takes) for the
-- jobs they run to finish and their outcomes to commit, keep them from starting others
-- (_stop_gate()), and unschedule them; pg_cron ends the idle ones, the others end at their
-- next batch. After wait with jobs still running: lock_not_available, nothing stopped.
-- Dispatching keeps queueing jobs; start() resumes. docs/operations.md#stopping-workers
CREATE FUNCTION pgdispatch.stop(wait interval DEFAULT '1 minute') RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  info record;
  jid bigint;
BEGIN
  info := pgdispatch.cron_info();
  IF info.version IS NULL THEN
    PERFORM pgdispatch._raise_cron_elsewhere(info.database_name, 'stop');
  END IF;
  PERFORM pgdispatch._stop_gate(to_regrole(quote_ident(current_user)), wait);
  INSERT INTO pgdispatch.worker AS w (workers, enabled)
  VALUES ((SELECT default_workers FROM pgdispatch.settings), false)
  ON CONFLICT (role_id) DO UPDATE SET enabled = false, updated_at = clock_timestamp();
  FOR jid IN
    SELECT j.jobid FROM cron.job j
     WHERE j.username = current_user AND j.jobname LIKE 'pgdispatch:%'
       AND j.database = current_database()
  LOOP
    PERFORM cron.unschedule(jid);
  END LOOP;
  PERFORM set_config('pgdispatch.worker_checked', current_user || ':' || 'pgdispatch'::regnamespace::oid, false);
END
$$;

-- How long an idle worker sleeps between polls: poll_min while jobs flowed within
-- fast_poll_window of last_activity, then doubling every 100 ms up to poll_max; never
-- past wake.
CREATE FUNCTION pgdispatch._poll_interval(
  cfg pgdispatch.settings, last_activity timestamptz, wake timestamptz)
RETURNS double precision
-- (PL/pgSQL, whose plans a session keeps: a SQL function called from PL/pgSQL was planned
-- again at every call, 20 times a second in every idle worker)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  RETURN greatest(0, least(
           CASE WHEN clock_timestamp() - last_activity < cfg.fast_poll_window
                THEN extract(epoch FROM cfg.poll_min)::double precision
                ELSE least(extract(epoch FROM cfg.poll_max)::double precision,
                           extract(epoch FROM cfg.poll_min)::double precision
                           * power(2, least(60, extract(epoch FROM clock_timestamp()
                                                              - last_activity
                                                              - cfg.fast_poll_window)
                                                * 10)::double precision))
           END,
           extract(epoch FROM wake - clock_timestamp())::double precision));
END
$$;

-- The idle workers' doorbell (see work()'s poll loop): take lock 1885824131 exclusively,
-- waiting at most 50 ms (for the workers the last ring woke to let go of it). False when
-- it stays taken: the caller does not poll for the others then.
CREATE FUNCTION pgdispatch._take_doorbell() RETURNS boolean
LANGUAGE plpgsql VOLATILE SET lock_timeout = '50ms' AS $$
BEGIN
  PERFORM pg_advisory_lock(1885824131, 0);
  RETURN true;
EXCEPTION WHEN lock_not_available THEN
  RETURN false;
END
$$;

-- Wait on the doorbell (see work()'s poll loop): take lock 1885824131 shared and let go of
-- it at once, waiting at most max_ms. True when it was taken (the poller let go of it, or
-- no poller holds it), false when the wait timed out. (The function's SET restores the
-- caller's lock_timeout on return, also the value set_config() gives it here.)
CREATE FUNCTION pgdispatch._wait_doorbell(max_ms integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET lock_timeout = '250ms' AS $$
DECLARE
  done boolean;
BEGIN
  done := set_config('lock_timeout', max_ms::text, true) IS NULL;
  done := pg_advisory_lock_shared(1885824131, 0) IS NULL;
  RETURN pg_advisory_unlock_shared(1885824131, 0);
EXCEPTION WHEN lock_not_available THEN
  RETURN false;
END
$$;

-- Delete up to max_rows (default settings.prune_batch) of the calling role's finished jobs
-- older than settings.retention, and cancellation requests of jobs no longer queued.
-- Returns the number of history rows deleted.
CREATE FUNCTION pgdispatch.prune(max_rows integer DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  cfg pgdispatch.settings;
  deleted bigint;
BEGIN
  SELECT * INTO cfg FROM pgdispatch.settings;
  -- planned at each call with the actual cut-off and limit (a cached generic plan may
  -- estimate the limit as a tenth of the history and scan all of it, every 10 s)
  EXECUTE 'DELETE FROM pgdispatch.job_history h
            WHERE h.ctid = ANY (ARRAY(SELECT x.ctid FROM pgdispatch.job_history x
                                       WHERE x.role_id = to_regrole(quote_ident(current_user))
                                         AND x.finished_at < $1
                                       ORDER BY x.finished_at LIMIT $2))'
    USING clock_timestamp() - cfg.retention, coalesce(max_rows, cfg.prune_batch);
  GET DIAGNOSTICS deleted = ROW_COUNT;
  DELETE FROM pgdispatch.cancel_request c
   WHERE c.role_id = to_regrole(quote_ident(current_user))
     AND NOT EXISTS (SELECT 1 FROM pgdispatch.job q WHERE q.id = c.job_id);
  RETURN deleted;
END
$$;

-- Run due jobs of the calling role.
--   slot => 0 (default): run in this session, e.g. CALL pgdispatch.work(drain => true)
--     in a test: every due job, then return.
--   slot => N >= 1: a pg_cron worker; exits at once when slot N is already served,
--     otherwise serves until its hand-over deadline (the next schedule tick plus a little,
--     so that pg_cron's pending run starts the moment this one exits).
--   max_jobs => N: stop after N job attempts.
-- Jobs run with the privileges of the role that dispatched them: this procedure only ever
-- claims jobs whose role is the session's own login role.
CREATE PROCEDURE pgdispatch.work(
  slot integer DEFAULT 0,
  drain boolean DEFAULT false,
  max_runtime interval DEFAULT NULL,
  max_jobs integer DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
  me name := session_user;
  me_id regrole := to_regrole(quote_ident(session_user));  -- jobs are the role's, by oid
  cfg pgdispatch.settings;
  j record;                       -- the claimed job: row_ctid, then pgdispatch.job's columns
  k integer;                      -- advisory lock key of the current job
  -- what a worker session (slot >= 1) sets for its own statements, and the session's
  -- values, which every job runs with
  gucs text[] := ARRAY['enable_seqscan', 'enable_bitmapscan', 'enable_sort', 'jit',
                       'synchronous_commit', 'plan_cache_mode'];
  session_gucs text[];
  worker_gucs text[];
  t_start timestamptz := clock_timestamp();
  deadline timestamptz;
  hard_deadline timestamptz;
  t_batch timestamptz;
  t_job timestamptz;
  t_last_job timestamptz := clock_timestamp();
  t_settings timestamptz := clock_timestamp();
  next_prune timestamptz := clock_timestamp();  -- slot 1: when to prune the history next
  pruned bigint;
  sleep_s double precision;
  claimed integer := 0;
  -- outcomes of the current batch
  o_ids bigint[]; o_ctids tid[]; o_states text[]; o_started timestamptz[]; o_finished timestamptz[];
  o_results jsonb[]; o_affected bigint[]; o_errors jsonb[];
  r_ctids tid[]; r_run_at timestamptz[]; r_errors jsonb[];   -- failed attempts to retry
  res jsonb; affected bigint; err jsonb; ok boolean;
  e_state text; e_msg text; e_detail text; e_hint text; e_context text;
  enabled boolean;
  backoff interval;
  keep_prepared text[];
  stmt text;
  attempted integer := 0;
  batch_limit integer;
  -- idle detection without scanning the queue: the job id sequence moves on every
  -- dispatch (of any role), non-transactionally and at once
  must_claim boolean := true;
  seen_seq bigint;
  cur_seq bigint;
  t_seq_change timestamptz := clock_timestamp();
  t_empty timestamptz := clock_timestamp();
  next_due timestamptz;
  t_now timestamptz;
  next_claim timestamptz;
  wake timestamptz;
  t_commit timestamptz;
  probe interval;
  seq_moved boolean;
  last_activity timestamptz;
  t_unclaimed timestamptz;        -- first dispatch seen since the last claim
  -- resetting the session between jobs (see "a fresh session for the next job" below)
  role_key integer := pgdispatch._role_key();
  keep_locks text[];              -- advisory locks held before, when others than the slot's
  lost_slot boolean := false;     -- another instance took the slot's lock: stop after the batch
  keep_cursors text[];            -- cursors the session held before (slot 0)
  cursor_name text;
  deferred_names text;            -- the database's INITIALLY DEFERRED constraints, by name
  lost_deferred boolean := false; -- they could not be deferred again: end the batch
  wrapped text;                   -- capture: the command wrapped to return its rows
  done boolean;                   -- (results of functions called for their effect)
  capturable boolean;
  watched boolean := true;        -- the role's watchdog runs: jobs with a timeout may start
  -- where a claim starts in the claim index: from the head (every priority), or at the
  -- last job run (its priority only) after a batch that stopped before its claim ran out
  c_lo integer;
  c_hi integer;
  c_run_at timestamptz;
  c_id bigint;
  resume boolean := false;
  resumed boolean := false;       -- this batch's claim resumed
  batch_cut boolean;              -- this batch stopped before its claim ran out
  t_head timestamptz := '-infinity';  -- the last claim from the head
  poller boolean := false;        -- this worker polls for the database's idle workers
  rung boolean;                   -- the doorbell was taken: the poller let go of it
  waited boolean;                 -- this wake-up waited on the doorbell (no pg_sleep)
BEGIN
  IF me <> current_user THEN
    RAISE EXCEPTION 'pgdispatch.work() must run as the session''s login role (session_user %, '
                    'current_user %)', me, current_user
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'Jobs run with exactly the privileges of the role that dispatched them: '
                   'connect as that role instead of SET ROLE.';
  END IF;
  IF max_jobs < 1 THEN
    RAISE EXCEPTION 'pgdispatch: max_jobs must be at least 1' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF slot < 0 THEN
    RAISE EXCEPTION 'pgdispatch: slot must be >= 0' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF slot > 0 THEN
    IF NOT pg_try_advisory_lock(1885824113 + slot, role_key) THEN
      RETURN;  -- another instance serves this slot (pg_cron catch-up run)
    END IF;
  END IF;
  SELECT * INTO cfg FROM pgdispatch.settings;
  probe := cfg.poll_min;
  IF slot = 0 THEN
    keep_prepared := ARRAY(SELECT ps.name FROM pg_prepared_statements ps);
  ELSE
    -- A worker session runs its own statements (claim, outcomes, retries, idle queries)
    -- with `gucs` set: they are planned with sequential scans, bitmap scans and sorts
    -- off, so that the queue is only ever read along an index or by ctid. Their plans
    -- are cached for the worker's whole run: a plan made while the queue was nearly
    -- empty, or with statistics taken then, stayed in use when a burst filled it (a
    -- claim that sorted the whole backlog, a batch outcome that scanned it) until
    -- autovacuum came by. (With those priced out, a statement whose only path is one,
    -- such as reading the settings, would cross jit_above_cost: JIT is off too.) With
    -- those off a generic plan is the custom one, so plans are generic at once
    -- (plan_cache_mode): the claim, whose generic plan is estimated dearer, was planned
    -- again for every batch (1.5 us per job of a drain). Batches
    -- commit as settings.worker_synchronous_commit says (default off: see
    -- docs/sql-api.md#settings). Jobs run with the session's own values: restored before
    -- a batch's first job, and RESET ALL after each. Draining in a caller's session
    -- (slot 0) changes none of them.
    session_gucs := ARRAY(SELECT current_setting(g) FROM unnest(gucs) g);
    worker_gucs := ARRAY['off', 'off', 'off', 'off', cfg.worker_synchronous_commit,
                         'force_generic_plan'];
    PERFORM set_config(g.name, g.value, false) FROM unnest(gucs, worker_gucs) AS g(name, value);
  END IF;
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
  -- What the session holds already, kept when jobs are reset (a caller draining in its own
  -- session): its session advisory locks (only session ones are left after the COMMIT)
  -- and its cursors (WITH HOLD ones).
  keep_locks := ARRAY(SELECT format('%s/%s/%s/%s', l.classid, l.objid, l.objsubid, l.mode)
                        FROM pg_locks l
                       WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.granted);
  IF cardinality(keep_locks) = (slot > 0)::integer THEN
    keep_locks := NULL;           -- none but the slot's own: the fast path
  END IF;
  keep_cursors := ARRAY(SELECT c.name FROM pg_cursors c);
  deferred_names := pgdispatch._deferred_constraints();

  seen_seq := pg_sequence_last_value('pgdispatch.job_id_seq'::regclass);
  LOOP
   -- Retention (slot 1), between batches: one pass of at most prune_batch rows, in a
   -- transaction of its own. A full pass means more is due: the next one follows after
   -- three times as long as this one took (at most a quarter of the worker's time, at the
   -- next batch boundary or idle moment), so that pruning keeps up with any completion
   -- rate; otherwise the next pass is prune_interval away. (One pass every prune_interval
   -- capped it at prune_batch / prune_interval rows a second: 100 by default.)
   IF slot = 1 AND clock_timestamp() >= next_prune THEN
     t_now := clock_timestamp();
     pruned := pgdispatch.prune(cfg.prune_batch);
     COMMIT;
     IF pruned >= cfg.prune_batch THEN
       next_prune := clock_timestamp() + (clock_timestamp() - t_now) * 3;
     ELSE
       next_prune := clock_timestamp() + cfg.prune_interval;
     END IF;
   END IF;
   IF must_claim THEN
    -- one batch: claim, run, record, commit
    IF slot > 0 THEN
      -- stop() (_stop_gate()): the batch holds its role's gate, shared, until it commits. A
      -- worker that cannot take it, or a scheduled one whose role's workers were stopped,
      -- ends here.
      EXIT WHEN NOT pg_try_advisory_xact_lock_shared(1885824130, role_key)
             OR (max_runtime IS NULL AND NOT drain
                 AND (SELECT w.enabled FROM pgdispatch.worker w WHERE w.role_id = me_id)
                     IS DISTINCT FROM true);
      -- Timeouts are the role's watchdog's: jobs with one start only while it runs (holds
      -- its lock, looked at here shared for a moment) and wait queued otherwise.
      watched := NOT pg_try_advisory_lock_shared(1885824113, role_key);
      IF NOT watched THEN
        done := pg_advisory_unlock_shared(1885824113, role_key);
      END IF;
    END IF;
    claimed := 0;
    batch_limit := least(cfg.batch_size, max_jobs - attempted);
    o_ids := '{}'; o_ctids := '{}'; o_states := '{}'; o_started := '{}'; o_finished := '{}';
    o_results := '{}'; o_affected := '{}'; o_errors := '{}';
    r_ctids := '{}'; r_run_at := '{}'; r_errors := '{}';
    t_batch := clock_timestamp();
    t_unclaimed := NULL;            -- dispatches seen so far are looked at now
    -- Every statement on the queue below leaves the planner one sensible path, whatever
    -- the statistics say and however small the queue was when the plan was cached
    -- (enable_seqscan is off in worker sessions, see above): the claim has a constant
    -- LIMIT in the claim index's order (a generic plan takes LIMIT $n for a tenth of the
    -- rows), and the outcomes and retries address the claimed rows by ctid alone
    -- (stable: we hold their row locks), so that no index can be misused for them.
    -- (run_at is compared with a variable, not with clock_timestamp(): the index then
    -- checks it on its entries, and jobs delayed into the future cost no heap visits.)
    -- Slots 2 and up are helpers: they leave a job to slot 1 for poll_max after it falls
    -- due, and so take jobs only when slot 1 is busy or a backlog builds up; racing slot
    -- 1 for every job of a trickle kept them all polling fast.
    t_now := clock_timestamp();
    IF slot >= 2 AND NOT drain THEN
      t_now := t_now - cfg.poll_max;
    END IF;
    -- Where the claim starts. The jobs a drain has finished leave their entries at the
    -- head of the claim index until a vacuum removes them, and autovacuum hears of a
    -- session's deletions only when its CALL ends: a claim from the head stepped over all
    -- of them (3,000-4,000 buffers per claim of 60 jobs, half of each job's cost, after
    -- 1M jobs drained in one CALL). So a batch that stopped before its claim ran out (full,
    -- or out of time) is followed by a claim that starts at its last job, in that
    -- job's priority; everything before it there was claimed already. A claim starts
    -- from the head again when that priority has no more due jobs, and at least every
    -- 100 ms, for a job of a higher priority, or one that fell due (or committed) with
    -- an earlier run_at meanwhile.
    resumed := resume AND clock_timestamp() - t_head < interval '100 milliseconds';
    IF NOT resumed THEN
      c_lo := -2147483648; c_hi := 2147483647; c_run_at := '-infinity'; c_id := -9223372036854775808;
      t_head := clock_timestamp();
    END IF;
    batch_cut := false;
    FOR j IN
      SELECT q.ctid AS row_ctid, q.* FROM pgdispatch.job q
       WHERE q.role_id = me_id AND q.priority BETWEEN c_lo AND c_hi
         AND (q.run_at, q.id) >= (c_run_at, c_id)
         AND q.run_at <= t_now AND (watched OR q.timeout IS NULL)
       ORDER BY q.priority DESC, q.run_at, q.id
       LIMIT 60
         FOR UPDATE SKIP LOCKED
    LOOP
      claimed := claimed + 1;
      k := pgdispatch._advisory_key(j.id);
      -- (Per job, functions are called in assignments, not with PERFORM: a plain
      -- expression is evaluated without a query, at a fraction of PERFORM's cost.)
      -- running: until the batch commits (the jobs view) ...
      done := pg_advisory_xact_lock(1885824110, k) IS NOT NULL;
      -- ... and executing: while the command runs (the watchdog interrupts only these)
      done := pg_advisory_lock(1885824112, k) IS NOT NULL;
      IF slot > 0 AND claimed = 1 THEN
        PERFORM set_config(g.name, g.value, false) FROM unnest(gucs, session_gucs) AS g(name, value);
        IF poller THEN
          -- busy: another idle worker polls for the database (the doorbell rings as it
          -- is let go of)
          done := pg_advisory_unlock(1885824131, 0);
          done := pg_advisory_unlock(1885824132, 0);
          poller := false;
        END IF;
      END IF;
      t_job := clock_timestamp();
      res := NULL; affected := NULL; err := NULL;
      BEGIN
        IF j.capture THEN
          -- Rows are captured by wrapping the command, which parse analysis refuses for
          -- commands that return no rows (DML without RETURNING, utility statements,
          -- several statements, SELECT INTO): those run as they are, keeping their row
          -- count. Preparing the wrapped form decides, before anything runs (parse
          -- analysis and rewriting, no execution): a command runs once, whatever it
          -- raises while it runs (0.1.0 ran it again after a syntax_error or
          -- feature_not_supported raised at run time, repeating what a rollback does not
          -- undo: nextval(), dblink, pg_net).
          wrapped := 'WITH pgdispatch_q AS (' || pgdispatch._command_body(j.command) || E'\n) '
                     'SELECT coalesce(jsonb_agg(to_jsonb(pgdispatch_q)), ''[]'') FROM pgdispatch_q';
          BEGIN
            EXECUTE 'PREPARE pgdispatch_capture(jsonb) AS ' || wrapped;
            DEALLOCATE pgdispatch_capture;
            capturable := true;
          EXCEPTION WHEN syntax_error OR feature_not_supported THEN
            capturable := false;
          END;
          IF capturable THEN
            EXECUTE wrapped INTO res USING j.payload;
            affected := jsonb_array_length(res);
          ELSE
            IF j.payload IS NULL THEN EXECUTE j.command; ELSE EXECUTE j.command USING j.payload; END IF;
            GET DIAGNOSTICS affected = ROW_COUNT;
            res := '[]';
          END IF;
        ELSIF j.payload IS NULL THEN
          EXECUTE j.command;
          GET DIAGNOSTICS affected = ROW_COUNT;
        ELSE
          EXECUTE j.command USING j.payload;
          GET DIAGNOSTICS affected = ROW_COUNT;
        END IF;
        -- The job's deferred constraint checks (and deferred constraint triggers) run now,
        -- as at the commit of a transaction of its own: a violation fails the job. (Left
        -- to the batch's COMMIT, it failed the whole batch, every time it was claimed
        -- again; and a SET CONSTRAINTS ... DEFERRED reached the batch's later jobs.)
        SET CONSTRAINTS ALL IMMEDIATE;
        ok := true;
      EXCEPTION WHEN OTHERS OR query_canceled THEN
        GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_msg = MESSAGE_TEXT,
          e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT, e_context = PG_EXCEPTION_CONTEXT;
        ok := false;
        IF e_state = '57014' THEN
          IF EXISTS (SELECT 1 FROM pgdispatch.cancel_request c
                      WHERE c.job_id = j.id AND c.role_id = me_id) THEN
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

      -- A fresh session for the next job (docs/sql-api.md#a-fresh-session-for-every-job).
      -- Advisory locks: the job's session locks go with the executing-job lock (a
      -- session lock was held until the worker exited); pg_advisory_unlock_all() releases
      -- the slot's own too, which is taken again at once. The random seed: a job's
      -- setseed() would otherwise fix every later job's random(). (The hot path: each
      -- statement here costs a microsecond or less; a caller's own advisory locks, the
      -- slow case, are looked at only when it held some.)
      IF keep_locks IS NULL THEN
        done := pg_advisory_unlock_all() IS NOT NULL;
        IF slot > 0 AND NOT pg_try_advisory_lock(1885824113 + slot, role_key) THEN
          lost_slot := true;      -- another instance of the slot started meanwhile: it serves
        END IF;
      ELSE
        done := pg_advisory_unlock(1885824112, k);
        PERFORM pgdispatch._release_advisory_locks(keep_locks);
      END IF;
      done := setseed(date_part('microseconds', clock_timestamp()) / 60000000) IS NOT NULL;
      -- deferrable constraints as declared again (SET CONSTRAINTS ALL IMMEDIATE above made
      -- the INITIALLY DEFERRED ones immediate for the rest of the transaction)
      IF ok AND deferred_names IS NOT NULL THEN
        BEGIN
          EXECUTE 'SET CONSTRAINTS ' || deferred_names || ' DEFERRED';
        EXCEPTION WHEN OTHERS THEN
          -- (a constraint dropped meanwhile, or one name for several constraints of a
          -- schema, not all deferrable): the next job starts a transaction of its own
          lost_deferred := true;
        END;
      END IF;
      -- settings, role, sequences (currval(), lastval(), cached values), temp objects
      IF current_user <> me THEN SET ROLE NONE; END IF;
      IF session_user <> me THEN RESET SESSION AUTHORIZATION; END IF;
      RESET ALL;
      DISCARD SEQUENCES;
      IF pg_my_temp_schema() <> 0 THEN DISCARD TEMP; END IF;
      IF slot = 0 AND cardinality(keep_prepared) > 0 THEN
        -- draining in the caller's own session: keep the caller's prepared statements
        -- (drivers such as psycopg prepare statements of their own)
        FOR stmt IN SELECT ps.name FROM pg_prepared_statements ps
                     WHERE NOT ps.name = ANY (keep_prepared) LOOP
          EXECUTE format('DEALLOCATE %I', stmt);
        END LOOP;
      ELSE
        DEALLOCATE ALL;
      END IF;
      UNLISTEN *;

      IF ok THEN
        o_ids := o_ids || j.id; o_ctids := o_ctids || j.row_ctid;
        o_states := o_states || 'succeeded'::text;
        o_started := o_started || t_job; o_finished := o_finished || clock_timestamp();
        o_results := o_results || res; o_affected := o_affected || affected;
        o_errors := o_errors || NULL::jsonb;
      ELSIF j.attempts + 1 < j.max_attempts AND err ->> 'message' <> 'job cancelled while running' THEN
        backoff := least(cfg.retry_backoff * power(2, j.attempts), cfg.retry_backoff_max);
        r_ctids := r_ctids || j.row_ctid; r_run_at := r_run_at || (clock_timestamp() + backoff);
        r_errors := r_errors || err;
      ELSE
        o_ids := o_ids || j.id; o_ctids := o_ctids || j.row_ctid;
        o_states := o_states || CASE WHEN err ->> 'message' = 'job cancelled while running'
                                     THEN 'cancelled' ELSE 'failed' END;
        o_started := o_started || t_job; o_finished := o_finished || clock_timestamp();
        o_results := o_results || NULL::jsonb; o_affected := o_affected || NULL::bigint;
        o_errors := o_errors || err;
      END IF;
      -- (rows the cursor fetched beyond this point stay locked until the commit below
      -- and are claimed again next time)
      batch_cut := claimed >= batch_limit OR clock_timestamp() - t_batch > cfg.batch_time
                   OR lost_deferred OR lost_slot;
      EXIT WHEN batch_cut;
    END LOOP;
    resume := batch_cut;
    IF batch_cut THEN
      -- the next claim starts here (>=: this job is finished or retried by then, both of
      -- which take it away from this key)
      c_lo := j.priority; c_hi := j.priority; c_run_at := j.run_at; c_id := j.id;
    END IF;
    IF claimed = 0 AND resumed THEN
      CONTINUE;                   -- nothing after the last job: claim from the head now
    END IF;
    IF claimed > 0 THEN
      -- Cursors the batch's jobs left open (a WITH HOLD one outlived the batch, until the
      -- worker exited), but the caller's. Once per batch: inside the claim loop its own
      -- cursor cannot be closed (pinned), and looking at pg_cursors after each job cost
      -- more than the rest of the reset together; a later job of the same batch can see
      -- them, like the batch's other transaction-scoped state (docs/sql-api.md).
      IF cardinality(keep_cursors) = 0 THEN
        EXECUTE 'CLOSE ALL';
      ELSE
        FOREACH cursor_name IN ARRAY ARRAY(SELECT c.name FROM pg_cursors c
                                            WHERE NOT c.name = ANY (keep_cursors)) LOOP
          EXECUTE format('CLOSE %I', cursor_name);
        END LOOP;
      END IF;
      IF slot > 0 THEN
        PERFORM set_config(g.name, g.value, false) FROM unnest(gucs, worker_gucs) AS g(name, value);
      END IF;
      IF cardinality(r_ctids) > 0 THEN
        -- failed attempts with attempts left: queued again after their backoff
        UPDATE pgdispatch.job q
           SET attempts = q.attempts + 1,
               run_at = r_run_at[array_position(r_ctids, q.ctid)],
               last_error = r_errors[array_position(r_ctids, q.ctid)]
         WHERE q.ctid = ANY (r_ctids);
      END IF;
      IF cardinality(o_ids) > 0 THEN
        -- the outcomes: finished jobs leave the queue for the history, in one statement
        -- whose plan is cached for the whole run
        WITH d AS (
          DELETE FROM pgdispatch.job dj WHERE dj.ctid = ANY (o_ctids) RETURNING dj.*
        )
        INSERT INTO pgdispatch.job_history AS h
               (id, role, role_id, command, payload, state, priority, attempts, max_attempts,
                timeout, capture, job_key, created_at, run_at, started_at, finished_at, result,
                rows_affected, error)
        SELECT d.id, d.role, d.role_id, d.command, d.payload, o.state, d.priority, d.attempts + 1,
               d.max_attempts, d.timeout, d.capture, d.job_key, d.created_at, d.run_at,
               o.started_at, o.finished_at, o.result, o.rows_affected, o.error
          FROM d
          JOIN unnest(o_ids, o_states, o_started, o_finished, o_results, o_affected, o_errors)
               AS o(id, state, started_at, finished_at, result, rows_affected, error)
            ON o.id = d.id;
        DELETE FROM pgdispatch.cancel_request c WHERE c.job_id = ANY (o_ids);
      END IF;
      COMMIT;
      lost_deferred := false;
      attempted := attempted + claimed;
      EXIT WHEN attempted >= max_jobs OR lost_slot;
      t_last_job := clock_timestamp();
      IF clock_timestamp() > hard_deadline THEN EXIT; END IF;
      -- a full batch: more may be waiting; a partial one: the queue is (nearly) empty
      CONTINUE WHEN claimed >= batch_limit OR drain;
    ELSE
      t_empty := clock_timestamp();
      t_now := clock_timestamp();
      -- nothing due now: when is the next delayed (or retried) job due? The claim
      -- index is ordered by priority first: look at the first future job of each
      -- priority the role has (a loose index scan), never at the whole queue. (Due
      -- jobs that another worker holds are not waited for: if they come back, the
      -- claim once a second finds them.)
      WITH RECURSIVE p(priority) AS (
        (SELECT q.priority FROM pgdispatch.job q WHERE q.role_id = me_id
          ORDER BY q.priority DESC LIMIT 1)
        UNION ALL
        SELECT (SELECT q.priority FROM pgdispatch.job q
                 WHERE q.role_id = me_id AND q.priority < p.priority
                 ORDER BY q.priority DESC LIMIT 1)
          FROM p WHERE p.priority IS NOT NULL
      )
      SELECT min((SELECT q.run_at FROM pgdispatch.job q
                    WHERE q.role_id = me_id AND q.priority = p.priority
                      AND q.run_at > t_now
                    ORDER BY q.priority DESC, q.run_at LIMIT 1))
        INTO next_due
        FROM p WHERE p.priority IS NOT NULL;
    END IF;
   END IF;

    -- idle
    EXIT WHEN (drain AND claimed = 0) OR clock_timestamp() >= deadline;
    IF clock_timestamp() - t_settings > interval '1 second' THEN
      t_settings := clock_timestamp();
      SELECT * INTO cfg FROM pgdispatch.settings;
      worker_gucs[5] := cfg.worker_synchronous_commit;
      deferred_names := pgdispatch._deferred_constraints();
      IF slot > 0 AND max_runtime IS NULL THEN
        -- a scheduled worker: stop() ends it
        SELECT w.enabled INTO enabled FROM pgdispatch.worker w WHERE w.role_id = me_id;
        EXIT WHEN enabled IS DISTINCT FROM true;
      END IF;
    END IF;
    -- End the transaction before sleeping, and commit at least every 50 ms while idle.
    -- Inside a procedure the first statement after a COMMIT pins a snapshot until the
    -- next COMMIT: a worker that slept through many polls in one transaction held the
    -- xmin horizon back, and with it the removal of the queue rows (and their index
    -- entries) that other workers delete, so that their claims slowed down.
    COMMIT;
    t_commit := clock_timestamp();
    IF claimed > 0 THEN
      -- a batch that was not full: jobs are flowing; wait a little so that the next
      -- batch takes several (fewer claims and commits per job under a steady stream)
      PERFORM pg_sleep(extract(epoch FROM cfg.batch_wait));
      probe := cfg.poll_min;
      must_claim := true;
    ELSE
      -- Nothing was due. Claim again when a dispatch shows in the job id sequence (its
      -- transaction may still be open: while nothing turns up, look again after probe,
      -- doubling, for claim_window), when a delayed or retried job falls due, or once a
      -- second regardless (a dispatch that committed after its claim window).
      -- Slot 1 (and a drain session) polls fast whenever jobs flow, so that one of the
      -- role's workers starts a job within about a millisecond. The helper slots poll
      -- fast only while they get jobs themselves, and otherwise look at a dispatch
      -- poll_max after they saw it (when they may take it, if slot 1 has not). A trickle
      -- of jobs costs one worker's fast polling.
      last_activity := CASE WHEN slot <= 1 THEN greatest(t_last_job, t_seq_change)
                            ELSE t_last_job END;
      IF clock_timestamp() - t_seq_change < cfg.claim_window
         AND clock_timestamp() - last_activity < cfg.fast_poll_window THEN
        next_claim := clock_timestamp() + probe;
        probe := probe * 2;
      ELSE
        next_claim := least(next_due, t_empty + interval '1 second',
                            t_unclaimed + cfg.poll_max);
      END IF;
      wake := least(next_claim, deadline, t_settings + interval '1 second',
                    CASE WHEN slot = 1 THEN next_prune END);
      -- the poll loop: as few statements as possible per wake-up (CPU while idle)
      sleep_s := pgdispatch._poll_interval(cfg, last_activity, wake);
      LOOP
        rung := false;
        waited := false;
        IF slot = 1 AND NOT drain AND sleep_s >= extract(epoch FROM cfg.poll_max) THEN
          -- Idle at the slowest poll: one such worker of the database polls for all of
          -- them, the poller (it holds lock 1885824132); the others wait on the doorbell
          -- (lock 1885824131, which the poller holds and lets go of for a moment when the
          -- job id sequence moves), at most 250 ms (or poll_max) at a time. A wake-up is
          -- most of what an idle role costs: 50 a second per role were 0.4-0.8% of a core
          -- each. A wait
          -- that ends at once without a dispatch (the doorbell not held: a poller
          -- handing over, or another session holding it) is followed by a plain poll.
          IF NOT poller AND pg_try_advisory_lock(1885824132, 0) THEN
            poller := pgdispatch._take_doorbell();
            IF NOT poller THEN
              done := pg_advisory_unlock(1885824132, 0);
            END IF;
          END IF;
          IF NOT poller THEN
            rung := pgdispatch._wait_doorbell(
                      greatest(1, least(greatest(250, extract(epoch FROM cfg.poll_max) * 1000),
                                        floor(extract(epoch FROM wake - clock_timestamp())
                                              * 1000)))::integer);
            waited := true;
          END IF;
        END IF;
        IF NOT waited THEN
          done := pg_sleep(sleep_s) IS NULL;
        END IF;
        cur_seq := pg_sequence_last_value('pgdispatch.job_id_seq'::regclass);
        IF rung AND cur_seq IS NOT DISTINCT FROM seen_seq THEN
          done := pg_sleep(sleep_s) IS NULL;  -- (see above)
          cur_seq := pg_sequence_last_value('pgdispatch.job_id_seq'::regclass);
        END IF;
        IF poller AND cur_seq IS DISTINCT FROM seen_seq THEN
          -- ring: the waiting workers take the doorbell, shared, and let go of it at once
          done := pg_advisory_unlock(1885824131, 0);
          poller := pgdispatch._take_doorbell();
          IF NOT poller THEN
            done := pg_advisory_unlock(1885824132, 0);
          END IF;
        END IF;
        EXIT WHEN cur_seq IS DISTINCT FROM seen_seq OR clock_timestamp() >= wake;
        IF clock_timestamp() - t_commit >= interval '50 milliseconds' THEN
          COMMIT;
          t_commit := clock_timestamp();
          sleep_s := pgdispatch._poll_interval(cfg, last_activity, wake);
        END IF;
      END LOOP;
      seq_moved := cur_seq IS DISTINCT FROM seen_seq;
      IF seq_moved THEN
        seen_seq := cur_seq;
        t_seq_change := clock_timestamp();
        t_unclaimed := coalesce(t_unclaimed, t_seq_change);
        probe := cfg.poll_min;
      END IF;
      must_claim := clock_timestamp() >= next_claim
                    OR (seq_moved AND (slot <= 1
                                       OR clock_timestamp() - t_last_job < cfg.fast_poll_window));
    END IF;
  END LOOP;
  IF poller THEN
    done := pg_advisory_unlock(1885824131, 0);
    done := pg_advisory_unlock(1885824132, 0);
  END IF;
  IF slot > 0 AND NOT lost_slot THEN
    PERFORM pg_advisory_unlock(1885824113 + slot, role_key);
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
  me_id regrole := to_regrole(quote_ident(session_user));
  t_start timestamptz := clock_timestamp();
  deadline timestamptz;
  cfg pgdispatch.settings;
  seen jsonb := '{}';     -- job id -> first time seen running (epoch)
  now_s double precision;
  r record;
  enabled boolean;
  t_settings timestamptz := clock_timestamp();
  busy boolean;
  wake timestamptz;
  lock_pids integer[];
  lock_keys bigint[];
  lock_since double precision[];  -- xact_start of each lock holder (epoch)
  running text[];                 -- ids of the jobs seen running in this poll
  candidates bigint[];
  timed boolean := false;         -- jobs with a timeout run
  done boolean;
  seen_seq bigint;                -- the job id sequence at the last poll
  cur_seq bigint;
  flowing boolean;                -- it moved since: jobs are dispatched (by any role)
BEGIN
  IF me <> current_user THEN
    RAISE EXCEPTION 'pgdispatch.watchdog() must run as the session''s login role'
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF NOT pg_try_advisory_lock(1885824113, pgdispatch._role_key()) THEN
    -- (workers look at this lock, shared, for a moment before each batch)
    PERFORM pg_sleep(0.01);
    IF NOT pg_try_advisory_lock(1885824113, pgdispatch._role_key()) THEN
      RETURN;
    END IF;
  END IF;
  PERFORM set_config('application_name', 'pgdispatch watchdog', false);
  -- no plan of the watchdog's may scan the queue, however small it was when planned
  -- (see work())
  PERFORM set_config('enable_seqscan', 'off', false), set_config('enable_bitmapscan', 'off', false),
          set_config('enable_sort', 'off', false), set_config('jit', 'off', false);
  SELECT * INTO cfg FROM pgdispatch.settings;
  IF max_runtime IS NOT NULL THEN
    deadline := t_start + max_runtime;
  ELSIF pgdispatch._worker_schedule() = '* * * * *' THEN
    deadline := date_trunc('minute', t_start) + interval '1 minute' + interval '2 seconds';
  ELSE
    deadline := t_start + cfg.worker_runtime;
  END IF;
  COMMIT;
  -- Past its deadline it stays while jobs with a timeout run: nothing else enforces their
  -- timeouts, and a successor may find no free pg_cron slot.
  WHILE clock_timestamp() < deadline OR timed LOOP
    now_s := extract(epoch FROM clock_timestamp());
    busy := false;
    timed := false;
    cur_seq := pg_sequence_last_value('pgdispatch.job_id_seq'::regclass);
    flowing := cur_seq IS DISTINCT FROM seen_seq;
    seen_seq := cur_seq;
    running := '{}';
    -- the role's executing jobs: (backend, low 32 bits of the job id) from the locks,
    -- then the jobs by primary key (an index probe per high word the id sequence has
    -- reached). Two steps, so that no plan can scan the role's queue (a join of the
    -- locks with the queue was planned as a scan of a 100k backlog on every poll).
    SELECT array_agg(l.pid), array_agg(l.objid::bigint),
           array_agg(extract(epoch FROM a.xact_start)::double precision)
      INTO lock_pids, lock_keys, lock_since
      FROM pg_locks l
      JOIN pg_stat_activity a ON a.pid = l.pid AND a.usesysid = me_id
     WHERE l.locktype = 'advisory' AND l.classid = 1885824112::oid AND l.objsubid = 2
       AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());
    candidates := ARRAY(
      SELECT (h << 32) | k
        FROM unnest(lock_keys) k,
             generate_series(0, coalesce(pg_sequence_last_value('pgdispatch.job_id_seq'::regclass),
                                         0) >> 32) h);
    -- (the role is checked below, not in the query: the primary key is then the only
    -- index with a condition)
    FOR r IN
      SELECT q.id, q.role_id, q.timeout, lk.pid, lk.since,
             EXISTS (SELECT 1 FROM pgdispatch.cancel_request c
                      WHERE c.job_id = q.id AND c.role_id = me_id) AS cancel
        FROM pgdispatch.job q
        JOIN unnest(lock_pids, lock_keys, lock_since) AS lk(pid, key, since)
          ON lk.key = (q.id & 4294967295)
       WHERE q.id = ANY (candidates)
    LOOP
      CONTINUE WHEN r.role_id <> me_id;
      busy := true;
      timed := timed OR r.timeout IS NOT NULL;
      running := running || r.id::text;
      IF NOT seen ? r.id::text THEN
        -- When did it start? Not before its worker's transaction, and no later than
        -- batch_time (a batch starts no job after that) plus 100 ms (the most a worker
        -- waits in its transaction before claiming) after it: take that upper bound, or
        -- now if sooner. A timeout then never fires early, and at most about
        -- watchdog_poll + batch_time + 100 ms late even when the watchdog, asleep for
        -- a second while nothing ran, first sees the job late.
        seen := seen || jsonb_build_object(
                  r.id::text,
                  least(now_s, r.since + extract(epoch FROM cfg.batch_time)::double precision + 0.1));
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
    -- forget jobs that are no longer running: a job queued again for a retry gets its
    -- full timeout when it runs again (0.1.0 kept its first start, and a retried job
    -- was interrupted at once)
    IF seen <> '{}' THEN
      seen := coalesce((SELECT jsonb_object_agg(s.k, s.v) FROM jsonb_each(seen) s(k, v)
                         WHERE s.k = ANY (running)), '{}');
    END IF;
    COMMIT;
    IF clock_timestamp() - t_settings > interval '1 second' THEN
      t_settings := clock_timestamp();
      SELECT * INTO cfg FROM pgdispatch.settings;
      IF max_runtime IS NULL THEN
        SELECT w.enabled INTO enabled FROM pgdispatch.worker w WHERE w.role_id = me_id;
        EXIT WHEN enabled IS DISTINCT FROM true;
      END IF;
      -- pg_cron's jobs of renamed and dropped roles, jobs of dropped roles
      -- (docs/operations.md#role-lifecycle)
      PERFORM pgdispatch.repair_roles();
      IF session_user <> me THEN
        -- this role was renamed: its pg_cron jobs still name the former name, which pg_cron
        -- no longer finds. Schedule them again under the new one (in an app database its
        -- first dispatch says what to do).
        me := session_user;
        IF max_runtime IS NULL AND (SELECT version FROM pgdispatch.cron_info()) IS NOT NULL THEN
          BEGIN
            PERFORM pgdispatch.start();
          EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pgdispatch: cannot schedule the workers of role % again after its '
                          'rename: %', me, SQLERRM;
          END;
        END IF;
      END IF;
    END IF;
    -- every watchdog_poll while the role's jobs run, every second otherwise. Inside a procedure
    -- the first statement after a COMMIT pins a snapshot, and with it the xmin horizon,
    -- until the next COMMIT: sleep in pieces, each in a transaction of its own, so that
    -- the queue rows other sessions delete can be removed meanwhile. Pieces of 50 ms
    -- while the role's jobs run or any role dispatches (workers deleting queue rows;
    -- at 2,000 jobs a second no job may be running at the moment of a poll, and 250 ms
    -- pieces let the queue grow by a third), of 250 ms while all is idle: a
    -- wake-up costs an idle role more than anything it does (20 a second were 0.3-0.4%
    -- of a core per role), and the claims of other roles' workers start after their last
    -- job (work()), so that the queue entries a longer piece keeps are not on their way.
    wake := clock_timestamp()
            + CASE WHEN busy THEN cfg.watchdog_poll
                   ELSE greatest(interval '1 second', cfg.watchdog_poll) END;
    WHILE clock_timestamp() < wake LOOP
      COMMIT;
      done := pg_sleep(least(CASE WHEN busy OR flowing THEN 0.05 ELSE 0.25 END,
                             extract(epoch FROM wake - clock_timestamp()))) IS NULL;
    END LOOP;
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
  o_priority integer;
  o_max_attempts integer;
  o_timeout interval;
  seen text[];
  rows_json jsonb;
  at timestamptz;
BEGIN
  -- The hot path: a row trigger without options, once the role's workers are checked in
  -- this session. The same checks as below, in as few statements as possible (each
  -- expression of a PL/pgSQL function is set up again in every transaction: a single-row
  -- INSERT pays that for each one); anything else, or a check that fails, takes the
  -- general path, which raises the error.
  IF TG_LEVEL = 'ROW' AND TG_NARGS = 1 AND TG_WHEN = 'AFTER' THEN
    parts := parse_ident(TG_ARGV[0]);
    IF cardinality(parts) = 2
       AND pg_catalog.pg_get_function_result(to_regprocedure(format('%I.%I(jsonb)', parts[1], parts[2])))
           IS NOT NULL
       AND current_setting('pgdispatch.worker_checked', true)
           = current_user || ':' || 'pgdispatch'::regnamespace::oid THEN
      at := clock_timestamp();
      INSERT INTO pgdispatch.job (command, payload, created_at, run_at)
      VALUES (format('SELECT %I.%I($1)', parts[1], parts[2]),
              CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END, at, at);
      RETURN NULL;
    END IF;
  END IF;

  o_priority := 0;
  o_max_attempts := 1;
  seen := '{}';
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
  -- to_regprocedure() finds procedures too, which the job's SELECT cannot call: every job
  -- failed. (pg_get_function_result() is NULL for a procedure: no catalog query here.)
  IF pg_catalog.pg_get_function_result(fn) IS NULL THEN
    RAISE EXCEPTION 'pgdispatch.trigger(): %(jsonb) is a procedure, not a function', TG_ARGV[0]
      USING ERRCODE = 'wrong_object_type',
            HINT = 'A dispatch trigger''s job runs SELECT <function>($1): name a function '
                   'taking one jsonb argument (it may CALL the procedure).';
  END IF;
  cmd := format('SELECT %I.%I($1)', parts[1], parts[2]);
  -- options (the same checks as pgdispatch.dispatch(), which the hot path below bypasses)
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
  IF o_delay < interval '0' OR o_max_attempts < 1 OR o_timeout <= interval '0' THEN
    RAISE EXCEPTION 'pgdispatch.trigger(): bad options in trigger % (delay must not be negative, '
                    'max_attempts at least 1, timeout positive)', TG_NAME
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF current_setting('pgdispatch.worker_checked', true)
     IS DISTINCT FROM current_user || ':' || 'pgdispatch'::regnamespace::oid THEN
    PERFORM pgdispatch._ensure_worker();
  END IF;

  IF TG_LEVEL = 'ROW' THEN
    -- a row trigger with options (or before the workers are checked): one insert
    at := clock_timestamp();
    INSERT INTO pgdispatch.job (command, payload, priority, max_attempts, timeout, created_at, run_at)
    VALUES (cmd, CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END,
            o_priority, o_max_attempts, o_timeout, at, at + coalesce(o_delay, interval '0'));
    RETURN NULL;
  END IF;

  IF TG_OP = 'TRUNCATE' THEN
    -- TRUNCATE has no rows to pass (nor transition tables): one job, $1 = '[]' (which no
    -- other statement-level job gets: a statement affecting no row dispatches nothing)
    PERFORM pgdispatch.dispatch(cmd, '[]'::jsonb, o_delay, o_priority, o_max_attempts, o_timeout);
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

-- pg_cron 1.5 replaced cron.unschedule(name) with cron.unschedule(text): grant whichever
-- this pg_cron has. In an app database apart from pg_cron's nothing of pg_cron is here:
-- the role's workers are started from pg_cron's database (cron_statements()).
CREATE FUNCTION pgdispatch.grant_usage(role_name name) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  r record;
  cron_functions text;
BEGIN
  SELECT rolname, rolcanlogin INTO r FROM pg_roles WHERE rolname = role_name;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'pgdispatch: role % does not exist', role_name USING ERRCODE = 'undefined_object';
  END IF;
  EXECUTE format('GRANT USAGE ON SCHEMA pgdispatch TO %I', role_name);
  -- (a job's role and role_id are its writer's: their defaults)
  EXECUTE format('GRANT SELECT, DELETE, UPDATE (attempts, run_at, last_error), INSERT (%s) '
                 'ON pgdispatch.job TO %I',
                 (SELECT string_agg(quote_ident(t.attname), ', ' ORDER BY t.attnum)
                    FROM pg_attribute t
                   WHERE t.attrelid = 'pgdispatch.job'::regclass AND t.attnum > 0
                     AND NOT t.attisdropped AND t.attname NOT IN ('role', 'role_id')),
                 role_name);
  EXECUTE format('GRANT SELECT, INSERT, DELETE ON pgdispatch.job_history, '
                 'pgdispatch.cancel_request TO %I', role_name);
  EXECUTE format('GRANT SELECT, INSERT (workers, enabled, schedule, updated_at), '
                 'UPDATE (role, workers, enabled, schedule, updated_at) '
                 'ON pgdispatch.worker TO %I', role_name);
  EXECUTE format('GRANT SELECT, INSERT ON pgdispatch.definer_function TO %I', role_name);
  EXECUTE format('GRANT SELECT ON pgdispatch.settings, pgdispatch.jobs, pgdispatch.meta TO %I', role_name);
  EXECUTE format('GRANT USAGE ON SEQUENCE pgdispatch.job_id_seq TO %I', role_name);
  EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgdispatch TO %I', role_name);
  EXECUTE format('GRANT EXECUTE ON ALL PROCEDURES IN SCHEMA pgdispatch TO %I', role_name);
  IF NOT r.rolcanlogin THEN
    RAISE NOTICE 'pgdispatch: role % cannot log in: it can dispatch only through SECURITY DEFINER '
                 'functions or definer dispatch triggers owned by a login role', role_name;
  END IF;
  IF (SELECT version FROM pgdispatch.cron_info()) IS NULL THEN
    RAISE NOTICE 'pgdispatch: pg_cron runs in another database: start the workers of % from there '
                 '(run the statements of SELECT * FROM pgdispatch.cron_statements() as %, in '
                 'pg_cron''s database as %)', role_name, role_name, role_name;
    RETURN;
  END IF;
  SELECT string_agg(f::regprocedure::text, ', ') INTO cron_functions
    FROM unnest(ARRAY[to_regprocedure('cron.schedule(text,text,text)'),
                      to_regprocedure('cron.unschedule(bigint)'),
                      to_regprocedure('cron.unschedule(name)'),
                      to_regprocedure('cron.unschedule(text)')]) f
   WHERE f IS NOT NULL;
  IF NOT has_schema_privilege(role_name, 'cron', 'USAGE')
     OR EXISTS (SELECT 1 FROM unnest(string_to_array(cron_functions, ', ')) f
                 WHERE NOT has_function_privilege(role_name, f, 'EXECUTE')) THEN
    BEGIN
      EXECUTE format('GRANT USAGE ON SCHEMA cron TO %I', role_name);
      EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', cron_functions, role_name);
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
END
$$;

-- revoke_usage() also stops the role's workers: a worker that lost its privileges fails
-- at every pg_cron run. The jobs they run finish first (up to a minute, as stop()); its
-- worker row goes (the workers end at their next batch)
-- and its pg_cron jobs are unscheduled when the caller may (the role itself, a superuser,
-- or an owner that _manages_cron()); otherwise a WARNING gives the statement to run.
-- Its queued jobs stay queued (they run again if usage is granted again).
CREATE FUNCTION pgdispatch.revoke_usage(role_name name) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  rid regrole;
  had_workers boolean;
  left_over bigint := 0;
BEGIN
  SELECT r.oid INTO rid FROM pg_roles r WHERE r.rolname = role_name;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'pgdispatch: role % does not exist', role_name USING ERRCODE = 'undefined_object';
  END IF;
  -- the jobs its workers run finish first, as with stop()
  PERFORM pgdispatch._stop_gate(rid, '1 minute');
  DELETE FROM pgdispatch.worker w WHERE w.role_id = rid AND w.enabled RETURNING true INTO had_workers;
  DELETE FROM pgdispatch.worker w WHERE w.role_id = rid;
  IF to_regclass('cron.job') IS NOT NULL THEN
    IF role_name = current_user OR pgdispatch._manages_cron()
       OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
      -- (as the caller: pgdispatch's owner, or a superuser)
      DELETE FROM cron.job j
       WHERE j.username = role_name AND j.jobname LIKE 'pgdispatch:%'
         AND j.command LIKE 'CALL pgdispatch.%' AND j.database = current_database();
      SELECT count(*) INTO left_over FROM cron.job j
       WHERE j.username = role_name AND j.jobname LIKE 'pgdispatch:%'
         AND j.command LIKE 'CALL pgdispatch.%' AND j.database = current_database();
    ELSIF had_workers THEN
      left_over := NULL;
    END IF;
    IF left_over IS DISTINCT FROM 0 THEN
      RAISE WARNING 'pgdispatch: the pg_cron jobs of role % stay scheduled: % may not remove '
                    'them, and they fail at every run once % lost its privileges',
                    role_name, current_user, role_name
        USING HINT = format('Run SELECT pgdispatch.stop() as %I before revoking, or as a '
                            'superuser: DELETE FROM cron.job WHERE username = %L AND jobname '
                            'LIKE ''pgdispatch:%%''', role_name, role_name);
    END IF;
  ELSIF had_workers THEN
    RAISE WARNING 'pgdispatch: the pg_cron jobs of role % for database % stay scheduled in '
                  'pg_cron''s database, and fail at every run once % lost its privileges',
                  role_name, current_database(), role_name
      USING HINT = format('Run the statements of SELECT * FROM pgdispatch.cron_statements(''stop'') '
                          'as %I before revoking, or in pg_cron''s database as a superuser: '
                          'DELETE FROM cron.job WHERE username = %L AND database = %L',
                          role_name, role_name, current_database());
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
  IF to_regclass('cron.job') IS NULL THEN
    -- an app database apart from pg_cron's: its workers are unscheduled there, with the
    -- statements of cron_statements('uninstall') (sa_pgdispatch.uninstall(cron_url=...))
    SELECT string_agg(w.role_id::text, ', ') INTO others FROM pgdispatch.worker w
     WHERE w.role_id <> to_regrole(quote_ident(current_user)) AND w.enabled AND NOT superuser
       AND EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = w.role_id);
    IF others IS NOT NULL THEN
      RAISE EXCEPTION 'pgdispatch: roles % still have pg_cron workers that only they (or a '
                      'superuser) can unschedule', others
        USING ERRCODE = 'object_in_use',
              HINT = 'Have each of them run the statements of SELECT * FROM '
                     'pgdispatch.cron_statements(''stop'') in pg_cron''s database, or uninstall '
                     'as a superuser.';
    END IF;
  ELSIF superuser THEN
    FOR jid IN SELECT j.jobid FROM cron.job j WHERE j.jobname LIKE 'pgdispatch:%'
                 AND j.database = current_database()
                 AND j.command LIKE 'CALL pgdispatch.%' LOOP
      PERFORM cron.unschedule(jid);
    END LOOP;
  ELSE
    SELECT string_agg(w.role_id::text, ', ') INTO others FROM pgdispatch.worker w
     WHERE w.role_id <> to_regrole(quote_ident(current_user)) AND w.enabled
       AND EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = w.role_id);
    IF others IS NOT NULL THEN
      RAISE EXCEPTION 'pgdispatch: roles % still have pg_cron workers that only they (or a '
                      'superuser) can unschedule', others
        USING ERRCODE = 'object_in_use',
              HINT = 'Run SELECT pgdispatch.stop() as each of them, or uninstall as a superuser.';
    END IF;
    FOR jid IN SELECT j.jobid FROM cron.job j WHERE j.jobname LIKE 'pgdispatch:%'
                 AND j.database = current_database() AND j.username = current_user LOOP
      PERFORM cron.unschedule(jid);
    END LOOP;
  END IF;
  -- workers still running exit now instead of failing on the dropped schema
  -- (every role's row: lift the per-role check first; the schema is dropped next)
  ALTER TABLE pgdispatch.worker DROP CONSTRAINT IF EXISTS worker_role_is_current_user;
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
  -- only what definer_trigger_function() made: SECURITY DEFINER trigger functions of
  -- that name whose body is pgdispatch.trigger()'s (a 0.1.0 or a current one)
  FOR jid IN SELECT p.oid::bigint FROM pgdispatch.definer_function d
               JOIN pg_proc p ON p.oid = d.fn
              WHERE p.proname = 'pgdispatch_definer_trigger' AND p.prosecdef
                AND p.pronargs = 0 AND p.prorettype = 'trigger'::regtype
                AND p.proowner = (SELECT oid FROM pg_roles WHERE rolname = d.owner) LOOP
    EXECUTE format('DROP FUNCTION IF EXISTS %s CASCADE', jid::oid::regprocedure);
  END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Role lifecycle: renamed and dropped roles (docs/operations.md#role-lifecycle)
-- ---------------------------------------------------------------------------------------
-- Roles are global objects: no event trigger sees ALTER ROLE ... RENAME or DROP ROLE.
-- pg_cron keeps a job's role as a name (cron.job.username), and its launcher looks every
-- job's role up by that name when it loads its jobs: one job whose role no longer exists
-- by its name makes it exit (role "x" does not exist), restart a second later and exit
-- again, and then no job of any role starts (pg_cron 1.4 and 1.6 alike). pgdispatch's
-- rows belong to the role's oid (role_id), so a renamed role keeps its jobs; the
-- watchdogs call repair_roles() every second, and a renamed role's watchdog schedules its
-- workers again under the new name.

-- May pgdispatch's owner see and remove every role's pg_cron jobs? A superuser, or a
-- role that bypasses row level security on cron.job (BYPASSRLS, or its owner) with
-- SELECT and DELETE on it (Supabase's postgres).
CREATE FUNCTION pgdispatch._manages_cron() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF to_regclass('cron.job') IS NULL THEN
    RETURN false;
  END IF;
  RETURN has_table_privilege('cron.job', 'SELECT') AND has_table_privilege('cron.job', 'DELETE')
     AND ((SELECT r.rolsuper OR r.rolbypassrls FROM pg_roles r WHERE r.rolname = current_user)
          OR pg_has_role((SELECT c.relowner FROM pg_class c WHERE c.oid = 'cron.job'::regclass),
                         'USAGE'));
END
$$;

-- Find and fix what renamed and dropped roles leave behind. Runs as pgdispatch's owner;
-- returns one line per change. Every watchdog calls it about once a second, start()
-- before it schedules; an administrator may call it at any time.
-- * pg_cron's jobs of pgdispatch (in pg_cron's database, when the owner may manage other
--   roles' jobs: _manages_cron()): those whose role no longer exists by its name (renamed
--   or dropped: pg_cron's launcher cannot load them) and those whose command names
--   another role than the one of that name now (a dropped role's name taken by a new
--   role, which did not schedule them) are unscheduled. A renamed role's own watchdog
--   schedules its workers again under the new name (and its next dispatch does).
-- * Jobs of roles that no longer exist never run: they move to the history as failed,
--   with SQLSTATE 42704 and the message 'role dropped: ...'; their worker rows and
--   cancellation requests go, and their history is pruned after settings.retention.
CREATE FUNCTION pgdispatch.repair_roles() RETURNS SETOF text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  rec record;
  gone oid[];
  n bigint;
  cfg pgdispatch.settings;
  now_called name;
  command text;
BEGIN
  IF pgdispatch._manages_cron() THEN
    FOR rec IN
      SELECT x.* FROM (
        SELECT j.jobid, j.jobname, j.username, j.database, j.command, u.oid AS user_oid,
               (regexp_match(j.command, '/\* role ([0-9]+) \*/$'))[1]::oid AS role_oid
          FROM cron.job j
          LEFT JOIN pg_roles u ON u.rolname = j.username
         WHERE j.jobname LIKE 'pgdispatch:%' AND j.command LIKE 'CALL pgdispatch.%') x
       WHERE x.user_oid IS NULL OR x.role_oid <> x.user_oid
    LOOP
      -- (a job another session is changing now is looked at next time)
      PERFORM 1 FROM cron.job k WHERE k.jobid = rec.jobid AND k.username = rec.username
         FOR UPDATE SKIP LOCKED;
      CONTINUE WHEN NOT FOUND;
      SELECT r.rolname INTO now_called FROM pg_roles r WHERE r.oid = rec.role_oid;
      -- A renamed role's worker of this database: a superuser schedules it again under the
      -- new name at once (pg_cron terminates the running job of a removed background-worker
      -- job, and the role's own watchdog would then not be there to do it). Only pgdispatch's
      -- own command, rebuilt here, for this database's pgdispatch, as pg_cron schedules a new
      -- job (its cron.host, not the removed job's host). Otherwise the role's watchdog, or its
      -- next dispatch, schedules them again.
      command := CASE WHEN rec.jobname = 'pgdispatch:watchdog' THEN 'CALL pgdispatch.watchdog()'
                      WHEN rec.jobname ~ '^pgdispatch:[0-9]{1,2}$'
                      THEN format('CALL pgdispatch.work(slot => %s)', substr(rec.jobname, 12)::integer)
                 END || format(' /* role %s */', rec.role_oid);
      IF now_called IS NOT NULL AND rec.database = current_database()
         AND rec.command = command
         AND (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
         AND EXISTS (SELECT 1 FROM pgdispatch.worker w WHERE w.role_id = rec.role_oid AND w.enabled)
         AND NOT EXISTS (SELECT 1 FROM cron.job k
                          WHERE k.jobname = rec.jobname AND k.username = now_called) THEN
        BEGIN
          DELETE FROM cron.job k WHERE k.jobid = rec.jobid;
          PERFORM cron.schedule_in_database(rec.jobname, pgdispatch._worker_schedule(), command,
                                            current_database(), now_called);
          RETURN NEXT format('pg_cron job %s (%s) of role %s, since renamed to %s: scheduled '
                             'again as %s', rec.jobid, rec.jobname, rec.username, now_called,
                             now_called);
          CONTINUE;
        EXCEPTION WHEN OTHERS THEN
          NULL;  -- (e.g. the role may no longer log in) unscheduled only, below
        END;
      END IF;
      DELETE FROM cron.job k WHERE k.jobid = rec.jobid;
      RETURN NEXT format('unscheduled pg_cron job %s (%s in database %s) of role %s: %s',
                         rec.jobid, rec.jobname, rec.database, rec.username,
                         CASE WHEN now_called IS NOT NULL
                              THEN format('the role that scheduled it is now called %s', now_called)
                              WHEN rec.user_oid IS NULL THEN 'no such role'
                              ELSE format('scheduled by role %s, since dropped', rec.role_oid) END);
    END LOOP;
  END IF;

  -- roles of queued jobs that no longer exist (a loose scan of the claim index: one
  -- probe per role)
  gone := ARRAY(
    WITH RECURSIVE r(id) AS (
      (SELECT q.role_id::oid FROM pgdispatch.job q ORDER BY q.role_id LIMIT 1)
      UNION ALL
      SELECT (SELECT q.role_id::oid FROM pgdispatch.job q WHERE q.role_id > r.id
               ORDER BY q.role_id LIMIT 1)
        FROM r WHERE r.id IS NOT NULL)
    SELECT r.id FROM r
     WHERE r.id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_roles x WHERE x.oid = r.id));
  IF cardinality(gone) > 0 THEN
    WITH d AS (
      DELETE FROM pgdispatch.job q
       WHERE q.ctid = ANY (ARRAY(SELECT x.ctid FROM pgdispatch.job x
                                  WHERE x.role_id = ANY (gone::regrole[])
                                  LIMIT 1000 FOR UPDATE SKIP LOCKED))
      RETURNING q.*
    )
    INSERT INTO pgdispatch.job_history
           (id, role, role_id, command, payload, state, priority, attempts, max_attempts,
            timeout, capture, job_key, created_at, run_at, finished_at, error)
    SELECT d.id, d.role, d.role_id, d.command, d.payload, 'failed', d.priority, d.attempts,
           d.max_attempts, d.timeout, d.capture, d.job_key, d.created_at, d.run_at,
           clock_timestamp(),
           jsonb_build_object('sqlstate', '42704',
                              'message', format('role dropped: role %s (oid %s) no longer exists, '
                                                'so the job never runs', d.role, d.role_id::oid))
      FROM d;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
      RETURN NEXT format('%s queued job(s) of dropped roles failed', n);
    END IF;
  END IF;
  DELETE FROM pgdispatch.cancel_request cr
   WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = cr.role_id);
  FOR rec IN DELETE FROM pgdispatch.worker w
            WHERE NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = w.role_id)
           RETURNING w.role, w.role_id LOOP
    RETURN NEXT format('removed the workers of dropped role %s (oid %s)', rec.role, rec.role_id::oid);
  END LOOP;

  -- the history of dropped roles (each role prunes its own)
  gone := ARRAY(
    WITH RECURSIVE r(id) AS (
      (SELECT h.role_id::oid FROM pgdispatch.job_history h ORDER BY h.role_id LIMIT 1)
      UNION ALL
      SELECT (SELECT h.role_id::oid FROM pgdispatch.job_history h WHERE h.role_id > r.id
               ORDER BY h.role_id LIMIT 1)
        FROM r WHERE r.id IS NOT NULL)
    SELECT r.id FROM r
     WHERE r.id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_roles x WHERE x.oid = r.id));
  IF cardinality(gone) > 0 THEN
    SELECT * INTO cfg FROM pgdispatch.settings;
    DELETE FROM pgdispatch.job_history h
     WHERE h.ctid = ANY (ARRAY(SELECT x.ctid FROM pgdispatch.job_history x
                                WHERE x.role_id = ANY (gone::regrole[])
                                  AND x.finished_at < clock_timestamp() - cfg.retention
                                LIMIT cfg.prune_batch));
  END IF;
END
$$;

-- Only the installing role (and whom grant_usage() names) may use pgdispatch.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgdispatch FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA pgdispatch FROM PUBLIC;
