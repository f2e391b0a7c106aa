-- record_check (migrations/0004) for many checks in one call and one transaction: a replica's
-- health writer hands over every check result that finished while its previous write ran.
-- Each element is exactly record_check — the same fence (actor id, holder, epoch, liveness),
-- the same status rule, history row and notification — taken in instance order (so that two
-- writers never lock the same rows in opposite orders). One commit instead of one per check:
-- under a storm the per-check commits, not the rows, were the cost. Returns the previous
-- health_status of each element in input order (NULL where its fence no longer holds).
-- Additive: record_check stays, and single checks still use it.
CREATE OR REPLACE FUNCTION toygres_actors.record_checks(
    p_instance_ids uuid[],
    p_actor_ids text[],
    p_holders text[],
    p_epochs bigint[],
    p_observed text[],
    p_keep_status boolean[],
    p_postgres_versions text[],
    p_response_times_ms integer[],
    p_errors text[])
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    v_out text[] := array_fill(NULL::text, ARRAY[coalesce(array_length(p_instance_ids, 1), 0)]);
    v_i   integer;
BEGIN
    FOR v_i IN
        SELECT o.i FROM generate_subscripts(p_instance_ids, 1) AS o(i)
         ORDER BY p_instance_ids[o.i], o.i
    LOOP
        v_out[v_i] := toygres_actors.record_check(
            p_instance_ids[v_i], p_actor_ids[v_i], p_holders[v_i], p_epochs[v_i],
            p_observed[v_i], p_keep_status[v_i], p_postgres_versions[v_i],
            p_response_times_ms[v_i], p_errors[v_i]);
    END LOOP;
    RETURN v_out;
END;
$$;
