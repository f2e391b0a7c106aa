-- 0017_check_writes_by_key.sql — the batch of checks finds each instance row and its probe
-- lease by key.
--
-- record_checks_seen (migrations/0016) joined the leases on the instance and filtered on
-- holder and epoch in the same WHERE: the trap 0009 took record_check_seen out of. In a
-- 10,000-instance burst the lease table grows from nothing faster than its statistics, and
-- the statement's plan walked the replica's (holder, epoch) index — every lease of the
-- replica read for every batch: 34 ms a statement, 50 s of PostgreSQL's time in the burst's
-- first two minutes, which the Duroxide turns and the probes waited behind. Now the rows of
-- the batch are joined to the instance and its lease by their keys alone; the holder and
-- epoch fence is compared after, and a lease held by another (name, epoch) leaves the check
-- out as before (the caller writes it alone: refused). Same signature, same results.

CREATE OR REPLACE FUNCTION toygres_actors.record_checks_seen(
    p_holder text,
    p_epoch bigint,
    p_instance_ids uuid[],
    p_actor_ids text[],
    p_states text[],
    p_targets text[],
    p_observed text[],
    p_keep_status boolean[],
    p_postgres_versions text[],
    p_response_times_ms integer[],
    p_errors text[])
RETURNS TABLE (instance_id uuid, written boolean, previous_status text, row_state text,
               row_target text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := clock_timestamp();
    r record;
BEGIN
    FOR r IN
        WITH c AS (
            SELECT * FROM unnest(p_instance_ids, p_actor_ids, p_states, p_targets, p_observed,
                                 p_keep_status, p_postgres_versions, p_response_times_ms,
                                 p_errors)
                       AS c(id, actor_id, state, target, observed, keep, version, response_ms,
                            error)),
        locked AS (
            SELECT i.id, i.health_status::text AS previous, i.k8s_name,
                   i.state::text AS now_state,
                   COALESCE(i.dns_connection_string, i.ip_connection_string) AS now_target,
                   l.holder, l.holder_epoch
              FROM c
              JOIN toygres_cms.instances i
                ON i.id = c.id AND i.instance_actor_orchestration_id = c.actor_id
              JOIN toygres_actors.probe_leases l ON l.instance_id = c.id
             WHERE EXISTS (SELECT 1 FROM toygres_actors.replicas rp
                            WHERE rp.name = p_holder AND rp.epoch = p_epoch
                              AND NOT rp.draining AND rp.expires_at > v_now)
               FOR NO KEY UPDATE OF i SKIP LOCKED
               FOR SHARE OF l SKIP LOCKED),
        m AS (
            SELECT c.*, k.previous, k.k8s_name, k.now_state, k.now_target,
                   (k.now_state = c.state AND k.now_target IS NOT DISTINCT FROM c.target) AS same,
                   CASE WHEN c.keep THEN k.previous ELSE c.observed END AS new_status
              FROM c JOIN locked k
                ON k.id = c.id AND k.holder = p_holder AND k.holder_epoch = p_epoch),
        u AS (
            UPDATE toygres_cms.instances i
               SET health_status = toygres_actors.health_status_of(m.new_status),
                   last_health_check = v_now
              FROM m
             WHERE i.id = m.id AND m.same),
        h AS (
            INSERT INTO toygres_cms.instance_health_checks
                        (instance_id, status, postgres_version, response_time_ms, error_message,
                         checked_at, replica, replica_epoch)
            SELECT m.id, m.observed, m.version, m.response_ms, left(m.error, 2000), v_now,
                   p_holder, p_epoch
              FROM m WHERE m.same
            ON CONFLICT ON CONSTRAINT unique_health_check_time DO NOTHING)
        SELECT m.id, m.same, m.previous, m.new_status, m.k8s_name, m.now_state, m.now_target
          FROM m
    LOOP
        IF r.same AND r.previous IS DISTINCT FROM r.new_status THEN
            PERFORM pg_notify('toygres_health', json_build_object(
                'k8s_name', left(r.k8s_name, 255), 'old', r.previous, 'new', r.new_status,
                'checked_at', v_now)::text);
        END IF;
        instance_id := r.id;
        written := r.same;
        previous_status := CASE WHEN r.same THEN r.previous END;
        row_state := r.now_state;
        row_target := r.now_target;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- As every other write of a check: a lock it does wait for (a table lock) is bounded too.
ALTER FUNCTION toygres_actors.record_checks_seen(
    text, bigint, uuid[], text[], text[], text[], text[], boolean[], text[], integer[], text[])
    SET lock_timeout = '2s';
