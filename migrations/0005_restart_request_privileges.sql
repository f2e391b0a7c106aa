-- 0005_restart_request_privileges.sql — the authenticated path to a restart.
--
-- The raw control channel (NOTIFY toygres_actor_control) is open to every role that can
-- CONNECT; toygres_cms.request_actor_restart() is the path privileges govern: it runs as its
-- owner (SECURITY DEFINER, with a fixed search_path), PUBLIC may not execute it, and the
-- role toygres_actors_operator may. Grant that role to the people and scripts that restart
-- actors: `GRANT toygres_actors_operator TO alice;`.
--
-- Besides the control channel, it notifies `toygres_actor_restart_requested` (payload: the
-- request id), which the service listens to even with --control-notify=off: a notification
-- there only makes the service read the pending requests, which only this function writes.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'toygres_actors_operator') THEN
        CREATE ROLE toygres_actors_operator NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL; -- created at the same moment by another database's migration (roles are cluster-wide)
    WHEN insufficient_privilege THEN
    RAISE NOTICE 'toygres-actors: cannot create role toygres_actors_operator (no CREATEROLE): create it and GRANT EXECUTE ON FUNCTION toygres_cms.request_actor_restart(text) to it by hand';
END
$$;

CREATE OR REPLACE FUNCTION toygres_cms.request_actor_restart(p_name text)
RETURNS bigint LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id   uuid;
    v_name text;
    v_req  bigint;
BEGIN
    SELECT id, k8s_name INTO v_id, v_name FROM toygres_cms.instances WHERE k8s_name = p_name;
    IF v_id IS NULL THEN
        SELECT id, k8s_name INTO v_id, v_name FROM toygres_cms.instances
         WHERE dns_name = p_name AND state::text IN ('creating', 'running')
         ORDER BY created_at DESC LIMIT 1;
    END IF;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'toygres_cms.request_actor_restart: unknown instance %', quote_literal(left(p_name, 255))
            USING ERRCODE = 'no_data_found',
                  HINT = 'pass the instance''s k8s_name (or the dns_name of a live instance)';
    END IF;
    INSERT INTO toygres_cms.actor_restart_requests (instance_id, k8s_name, requested_by)
         VALUES (v_id, v_name, session_user) RETURNING id INTO v_req;
    PERFORM pg_notify('toygres_actor_control',
                      json_build_object('op', 'restart', 'k8s_name', left(v_name, 255), 'request_id', v_req)::text);
    PERFORM pg_notify('toygres_actor_restart_requested', v_req::text);
    RETURN v_req;
END;
$$;

REVOKE ALL ON FUNCTION toygres_cms.request_actor_restart(text) FROM PUBLIC;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'toygres_actors_operator') THEN
        GRANT USAGE ON SCHEMA toygres_cms TO toygres_actors_operator;
        GRANT EXECUTE ON FUNCTION toygres_cms.request_actor_restart(text) TO toygres_actors_operator;
    END IF;
END
$$;
