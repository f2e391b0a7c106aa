-- record_check_seen (migrations/0008) finds the instance's probe lease by its key. Its
-- first form joined the lease on the instance and filtered on holder and epoch in the same
-- WHERE; when the lease table's statistics are stale (it grows from nothing to 10,000 rows
-- in a burst of starts), the function's cached plan walked the (holder, epoch) index and
-- filtered on the instance — every lease of the replica read for one check: 530 buffers,
-- 1.7 ms of the check's 2.2 ms in a 10,000-instance burst. Now the row and its lease are
-- read by key alone, and the holder, epoch, liveness and draining fences are compared after
-- (one lookup of the replica instead of two). Same signature, same results.
CREATE OR REPLACE FUNCTION toygres_actors.record_check_seen(
    p_instance_id uuid,
    p_actor_id text,
    p_holder text,
    p_epoch bigint,
    p_state text,
    p_target text,
    p_observed text,
    p_keep_status boolean,
    p_postgres_version text,
    p_response_time_ms integer,
    p_error text,
    OUT written boolean,
    OUT previous_status text,
    OUT row_state text,
    OUT row_target text)
LANGUAGE plpgsql AS $$
DECLARE
    v_name   text;
    v_holder text;
    v_epoch  bigint;
    v_new    text;
    v_now    timestamptz;
    v_status toygres_cms.instances.health_status%TYPE;
BEGIN
    SELECT i.health_status::text, i.k8s_name, i.state::text,
           COALESCE(i.dns_connection_string, i.ip_connection_string), l.holder, l.holder_epoch
      INTO previous_status, v_name, row_state, row_target, v_holder, v_epoch
      FROM toygres_cms.instances i
      JOIN toygres_actors.probe_leases l ON l.instance_id = i.id
     WHERE i.id = p_instance_id AND i.instance_actor_orchestration_id = p_actor_id
       FOR NO KEY UPDATE OF i FOR SHARE OF l;
    v_now := clock_timestamp();
    IF NOT FOUND OR v_holder IS DISTINCT FROM p_holder OR v_epoch IS DISTINCT FROM p_epoch
       OR NOT EXISTS (
        SELECT 1 FROM toygres_actors.replicas
         WHERE name = p_holder AND epoch = p_epoch AND NOT draining AND expires_at > v_now) THEN
        written := NULL;
        previous_status := NULL;
        row_state := NULL;
        row_target := NULL;
        RETURN;
    END IF;
    IF row_state IS DISTINCT FROM p_state OR row_target IS DISTINCT FROM p_target THEN
        written := false;
        previous_status := NULL;
        RETURN;
    END IF;
    v_new := CASE WHEN p_keep_status THEN previous_status ELSE p_observed END;
    v_status := v_new;
    UPDATE toygres_cms.instances SET health_status = v_status, last_health_check = v_now
     WHERE id = p_instance_id;
    INSERT INTO toygres_cms.instance_health_checks
                (instance_id, status, postgres_version, response_time_ms, error_message, checked_at,
                 replica, replica_epoch)
         VALUES (p_instance_id, p_observed, p_postgres_version, p_response_time_ms, left(p_error, 2000), v_now,
                 p_holder, p_epoch)
    ON CONFLICT ON CONSTRAINT unique_health_check_time DO NOTHING;
    IF previous_status IS DISTINCT FROM v_new THEN
        PERFORM pg_notify('toygres_health', json_build_object(
            'k8s_name', left(v_name, 255), 'old', previous_status, 'new', v_new, 'checked_at', v_now)::text);
    END IF;
    written := true;
END;
$$;
