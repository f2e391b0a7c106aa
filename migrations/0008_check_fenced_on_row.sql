-- A check under a probe lease in one statement instead of two. Before, every check read its
-- row (state, actor, target), probed, then wrote through record_check. Now the write takes
-- what the probe was made against — the state and the target it read, or that the write
-- before it returned — and refuses when either changed: the probe then ran against the
-- wrong target, or the state no longer calls for this check. It returns the row as it is
-- now, so the next check (30 s later) probes without reading first, and a refused one
-- probes again at once against what it got back.
--
-- Additive: record_check stays, unchanged, for the releases before this one.
--
-- OUT columns: written is NULL when the lease, holder, epoch, liveness or actor fence
-- failed (nothing returned, nothing written); false when the row's state or target is not
-- what the probe was made against (nothing written; row_state and row_target say what it
-- is); true when written (previous_status is the health_status before).
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
    v_new    text;
    v_now    timestamptz;
    v_status toygres_cms.instances.health_status%TYPE;
BEGIN
    SELECT i.health_status::text, i.k8s_name, i.state::text,
           COALESCE(i.dns_connection_string, i.ip_connection_string)
      INTO previous_status, v_name, row_state, row_target
      FROM toygres_cms.instances i
      JOIN toygres_actors.probe_leases l ON l.instance_id = i.id
      JOIN toygres_actors.replicas r ON r.name = l.holder AND r.epoch = l.holder_epoch
     WHERE i.id = p_instance_id AND i.instance_actor_orchestration_id = p_actor_id
       AND l.holder = p_holder AND l.holder_epoch = p_epoch
       AND NOT r.draining
       FOR NO KEY UPDATE OF i FOR SHARE OF l;
    v_now := clock_timestamp();
    IF NOT FOUND OR NOT EXISTS (
        SELECT 1 FROM toygres_actors.replicas
         WHERE name = p_holder AND epoch = p_epoch AND expires_at > v_now) THEN
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
