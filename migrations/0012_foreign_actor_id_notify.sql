-- 0012_foreign_actor_id_notify.sql — NOTIFY `toygres_instances` (op `actor`) when someone other
-- than this service writes an actor id on an instance row.
--
-- toygres' own create flow and restart API start an instance actor in their own Duroxide store
-- and write its id (`actor-<k8s_name>`) on the row, without changing `state`. The service adopts
-- such an actor (starts its own, retires toygres'); this hint lets it do so at once instead of
-- at the next resync. Our own ids (`actor-<row id>-<suffix>`) and clearing the column stay
-- silent: a start of ours never notifies itself. The payload is migration 0002's, built by the
-- same function, which now takes the op of an UPDATE as its trigger argument (`state` without
-- one, as before); a release that does not know `actor` counts it as invalid and relies on its
-- resync.

CREATE OR REPLACE FUNCTION toygres_cms.notify_instance_change()
RETURNS TRIGGER LANGUAGE plpgsql AS $$
DECLARE
    v_row toygres_cms.instances;
    v_op  text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        v_row := NEW; v_op := 'insert';
    ELSIF TG_OP = 'DELETE' THEN
        v_row := OLD; v_op := 'delete';
    ELSE
        v_row := NEW; v_op := coalesce(TG_ARGV[0], 'state');
    END IF;
    PERFORM pg_notify('toygres_instances', json_build_object(
        'op', v_op,
        'id', v_row.id,
        'k8s_name', left(v_row.k8s_name, 255),
        'old_state', CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE OLD.state::text END,
        'new_state', CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE NEW.state::text END,
        'at', round(extract(epoch FROM clock_timestamp())::numeric, 6)
    )::text);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS toygres_instances_notify_actor ON toygres_cms.instances;
CREATE TRIGGER toygres_instances_notify_actor
    AFTER UPDATE OF instance_actor_orchestration_id ON toygres_cms.instances
    FOR EACH ROW WHEN (
        NEW.instance_actor_orchestration_id IS DISTINCT FROM OLD.instance_actor_orchestration_id
        AND NEW.instance_actor_orchestration_id IS NOT NULL
        AND left(NEW.instance_actor_orchestration_id, 43) <> 'actor-' || NEW.id::text || '-'
    )
    EXECUTE FUNCTION toygres_cms.notify_instance_change('actor');
