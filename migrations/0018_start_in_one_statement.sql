-- 0018_start_in_one_statement.sql — a new actor's start in one statement.
--
-- A start was seven round trips in one transaction: BEGIN, the leader's term, the actor-id
-- swap, the decision, the lease, the enqueue, COMMIT. A single insert's first probe runs
-- beside them (src/duro/eager.rs) on the same cores, and the fenced write of its first
-- check waits for their commit. Here the five in the middle are one call — the same
-- statements, in the same order, in the caller's transaction, which still commits on its
-- own (the fault tests stop a leader between this call and its commit).
--
-- The term (NULL: an operator's unfenced start) is asserted first and its lock held to the
-- commit, as `assert_term` does alone. The swap is the compare-and-set of
-- sql/swap_actor_id.sql: when the row no longer names `p_expected` or calls for no actor
-- (`p_states`), nothing else happens and `swapped` is false. Then the decision (NULL
-- action: none), the probe lease taken for (`p_lease_name`, `p_lease_epoch`) (NULL name:
-- none; `holder` is who holds it after), and the start through duroxide-pg's own
-- procedure in the store's schema `p_store_schema` (sql/enqueue_orchestrator_work.sql).
CREATE OR REPLACE FUNCTION toygres_actors.start_actor(
    p_term_name text, p_term_epoch bigint, p_term bigint,
    p_instance_id uuid, p_expected text, p_new text, p_states text[],
    p_k8s_name text, p_action text, p_reason text, p_trigger text, p_replica text,
    p_lease_name text, p_lease_epoch bigint, p_owner_ttl double precision,
    p_store_schema text, p_work_item text, p_visible_at timestamptz,
    OUT swapped boolean, OUT holder text, OUT holder_epoch bigint)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_term IS NOT NULL THEN
        PERFORM toygres_actors.assert_term(p_term_name, p_term_epoch, p_term);
    END IF;
    UPDATE toygres_cms.instances
       SET instance_actor_orchestration_id = p_new
     WHERE id = p_instance_id
       AND instance_actor_orchestration_id IS NOT DISTINCT FROM p_expected
       AND state::text = ANY(p_states);
    swapped := FOUND;
    IF NOT swapped THEN
        RETURN;
    END IF;
    IF p_action IS NOT NULL THEN
        INSERT INTO toygres_actors.decisions
               (instance_id, k8s_name, action, reason, old_actor_id, new_actor_id, trigger,
                replica)
        VALUES (p_instance_id, p_k8s_name, p_action, p_reason, p_expected, p_new, p_trigger,
                p_replica);
    END IF;
    IF p_lease_name IS NOT NULL THEN
        SELECT l.holder, l.holder_epoch INTO holder, holder_epoch
          FROM toygres_actors.lease_for_actor(p_instance_id, p_new, p_lease_name,
                                              p_lease_epoch, p_owner_ttl, true) l;
    END IF;
    EXECUTE format('SELECT %I.enqueue_orchestrator_work($1, $2, $3, NULL, NULL, NULL)',
                   p_store_schema)
      USING p_new, p_work_item, p_visible_at;
END;
$$;
