-- 0002_instance_notify.sql — NOTIFY `toygres_instances` on insert, delete and state change.
--
-- The payload is a hint, never the truth: the service re-reads the row. It is compact JSON
--   {"op":"insert|delete|state","id":"<uuid>","k8s_name":"…","old_state":…,"new_state":…,"at":<epoch s>}
-- `at` is the trigger's clock, used for the commit → action latency histogram. k8s_name is
-- cut to 255 characters (at most 1020 bytes), so a payload is always far below NOTIFY's
-- 8000-byte limit whatever the row holds; tags and connection strings are never included.

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
        v_row := NEW; v_op := 'state';
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

DROP TRIGGER IF EXISTS toygres_instances_notify_insert ON toygres_cms.instances;
CREATE TRIGGER toygres_instances_notify_insert
    AFTER INSERT ON toygres_cms.instances
    FOR EACH ROW EXECUTE FUNCTION toygres_cms.notify_instance_change();

DROP TRIGGER IF EXISTS toygres_instances_notify_delete ON toygres_cms.instances;
CREATE TRIGGER toygres_instances_notify_delete
    AFTER DELETE ON toygres_cms.instances
    FOR EACH ROW EXECUTE FUNCTION toygres_cms.notify_instance_change();

-- Only a change of `state` notifies: health writes (health_status, last_health_check) and
-- any other column update stay silent.
DROP TRIGGER IF EXISTS toygres_instances_notify_state ON toygres_cms.instances;
CREATE TRIGGER toygres_instances_notify_state
    AFTER UPDATE OF state ON toygres_cms.instances
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION toygres_cms.notify_instance_change();
