-- 0012_foreign_actor_id_notify.sql — NOTIFY `toygres_instances` (op `actor`) when someone other
-- than this service writes an actor id on an instance row.
--
-- toygres' own create flow and restart API start an instance actor in their own Duroxide store
-- and write its id (`actor-<k8s_name>`) on the row, without changing `state`. The service adopts
-- such an actor (starts its own, retires toygres'); this hint lets it do so at once instead of
-- at the next resync. Our own ids (`actor-<row id>-<suffix>`) and clearing the column stay
-- silent: a start of ours never notifies itself. Same payload shape as migration 0002's, so a
-- release that does not know `actor` counts it as invalid and relies on its resync.

CREATE OR REPLACE FUNCTION toygres_cms.notify_instance_actor_written()
RETURNS TRIGGER LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('toygres_instances', json_build_object(
        'op', 'actor',
        'id', NEW.id,
        'k8s_name', left(NEW.k8s_name, 255),
        'old_state', OLD.state::text,
        'new_state', NEW.state::text,
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
    EXECUTE FUNCTION toygres_cms.notify_instance_actor_written();
