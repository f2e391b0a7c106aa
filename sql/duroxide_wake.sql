-- Wake-ups for the waiting fetches of src/store.rs, and autovacuum settings for the queue
-- tables, applied after duroxide-pg's own migrations in the schema `--duroxide-schema`
-- names. Idempotent; serialized by an advisory lock (replicas start together).
--
-- Wake-ups: a statement trigger on each queue table notifies `toygres_actors_store_wake`
-- (payload `<schema> orch|work`) once per inserting statement that made work visible now
-- (a durable timer's row, visible minutes later, wakes nobody; NOTIFY folds duplicates
-- within a transaction). Other processes' waiting fetches wake on it; without it they
-- would see that work only after their bound (config::STORE_MAX_WAIT). A store
-- connection of the service sets `toygres_actors.origin` at connect, and the payload then
-- ends in ` <origin>`: that process woke itself already and ignores its own echo (a
-- release before this one ignores such three-field payloads and relies on its bound).
--
-- Autovacuum: the queue tables hold few live rows, but every turn inserts, updates and
-- deletes them. With the default scale factor (20 % of the live rows) a table that held
-- 10,000 rows during a burst keeps thousands of dead tuples for the fetch to skip, long
-- after the burst. A fixed threshold (1,000 dead rows, whatever the table's size) with no
-- cost delay keeps them vacuumed at any size; the instance lock table churns the same way.
DO $do$
DECLARE
    t TEXT;
    opts TEXT[] := ARRAY['autovacuum_vacuum_scale_factor=0', 'autovacuum_vacuum_threshold=1000',
                         'autovacuum_vacuum_cost_delay=0'];
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('toygres_actors_store_wake'));
    CREATE OR REPLACE FUNCTION __DUROXIDE__.toygres_actors_wake() RETURNS trigger
    LANGUAGE plpgsql AS $f$
    BEGIN
        IF EXISTS (SELECT 1 FROM new_rows
                    WHERE visible_at IS NULL
                       OR visible_at <= clock_timestamp() + interval '100 milliseconds') THEN
            PERFORM pg_notify('toygres_actors_store_wake', TG_TABLE_SCHEMA || ' ' || TG_ARGV[0]
                || coalesce(' ' || nullif(current_setting('toygres_actors.origin', true), ''), ''));
        END IF;
        RETURN NULL;
    END
    $f$;
    FOREACH t IN ARRAY ARRAY['orchestrator_queue', 'worker_queue'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_trigger
                        WHERE tgname = 'toygres_actors_wake'
                          AND tgrelid = ('__DUROXIDE__.' || t)::regclass) THEN
            EXECUTE format('CREATE TRIGGER toygres_actors_wake AFTER INSERT ON __DUROXIDE__.%I '
                           'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT '
                           'EXECUTE FUNCTION __DUROXIDE__.toygres_actors_wake(%L)',
                           t, CASE t WHEN 'orchestrator_queue' THEN 'orch' ELSE 'work' END);
        END IF;
    END LOOP;
    FOREACH t IN ARRAY ARRAY['orchestrator_queue', 'worker_queue', 'instance_locks'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_class
                        WHERE oid = ('__DUROXIDE__.' || t)::regclass
                          AND coalesce(reloptions, '{}') @> opts) THEN
            EXECUTE format('ALTER TABLE __DUROXIDE__.%I SET (autovacuum_vacuum_scale_factor = 0, '
                           'autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0)', t);
        END IF;
    END LOOP;
END
$do$
