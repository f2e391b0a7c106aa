-- 0016_check_writes_batched.sql — the checks a replica finishes together are written by one
-- statement.
--
-- At 10,000 instances a replica writes ~333 checks a second, each its own statement and its
-- own commit (record_check_seen): the statement, the plpgsql call and the commit cost
-- PostgreSQL more than the rows themselves. record_checks_seen writes many checks at once
-- with the same fences, row by row: the instance row names the check's actor, its probe
-- lease is the caller's (holder and epoch), the caller is a live replica, and the row's
-- state and probe target are those the probe was made against. Per check it returns what
-- record_check_seen would (written true/false, the previous status, the row as it is now),
-- the health NOTIFY goes out for each status that changed, and the history row is the same.
--
-- It never waits for a row lock: an instance row or lease someone holds (a CMS session, a
-- lease being moved) is skipped (SKIP LOCKED) and left out of the result, as is a check
-- whose fence fails. The caller writes each check left out alone, with record_check_seen,
-- which decides it exactly as before (and waits at most its 2 s for a held row): a held row
-- still delays its own instance only, and a refusal is still decided by one statement that
-- sees the row.
--
-- health_status may be an enum of the CMS's (in toygres_cms or public) or text:
-- health_status_of converts text to the column's type as an assignment in plpgsql does,
-- the type resolved when this migration runs.

CREATE OR REPLACE FUNCTION toygres_actors.health_status_of(p_status text)
RETURNS toygres_cms.instances.health_status%TYPE
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v toygres_cms.instances.health_status%TYPE;
BEGIN
    v := p_status;
    RETURN v;
END;
$$;

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
                   COALESCE(i.dns_connection_string, i.ip_connection_string) AS now_target
              FROM toygres_cms.instances i
              JOIN toygres_actors.probe_leases l ON l.instance_id = i.id
              JOIN c ON c.id = i.id AND i.instance_actor_orchestration_id = c.actor_id
             WHERE l.holder = p_holder AND l.holder_epoch = p_epoch
               AND EXISTS (SELECT 1 FROM toygres_actors.replicas rp
                            WHERE rp.name = p_holder AND rp.epoch = p_epoch
                              AND NOT rp.draining AND rp.expires_at > v_now)
               FOR NO KEY UPDATE OF i SKIP LOCKED
               FOR SHARE OF l SKIP LOCKED),
        m AS (
            SELECT c.*, k.previous, k.k8s_name, k.now_state, k.now_target,
                   (k.now_state = c.state AND k.now_target IS NOT DISTINCT FROM c.target) AS same,
                   CASE WHEN c.keep THEN k.previous ELSE c.observed END AS new_status
              FROM c JOIN locked k ON k.id = c.id),
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
