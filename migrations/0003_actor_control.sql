-- 0003_actor_control.sql — durable restart requests, the service's own bookkeeping, and the
-- health write used by the actors.

-- A restart asked for with toygres_cms.request_actor_restart(). The row is the durable part:
-- a request made while no service listens is honoured at the next start (the service
-- handles every row with handled_at IS NULL on each full reconcile).
CREATE TABLE IF NOT EXISTS toygres_cms.actor_restart_requests (
    id BIGSERIAL PRIMARY KEY,
    instance_id UUID NOT NULL REFERENCES toygres_cms.instances(id) ON DELETE CASCADE,
    k8s_name VARCHAR(255) NOT NULL,
    requested_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    requested_by TEXT NOT NULL DEFAULT current_user,
    handled_at TIMESTAMPTZ,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS idx_actor_restart_requests_pending
    ON toygres_cms.actor_restart_requests (instance_id) WHERE handled_at IS NULL;

-- request_actor_restart(name): name is a k8s_name, or the dns_name of a live instance.
-- Unknown names raise an error and record nothing. Returns the request id.
CREATE OR REPLACE FUNCTION toygres_cms.request_actor_restart(p_name text)
RETURNS bigint LANGUAGE plpgsql AS $$
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
    INSERT INTO toygres_cms.actor_restart_requests (instance_id, k8s_name)
         VALUES (v_id, v_name) RETURNING id INTO v_req;
    PERFORM pg_notify('toygres_actor_control',
                      json_build_object('op', 'restart', 'k8s_name', left(v_name, 255), 'request_id', v_req)::text);
    RETURN v_req;
END;
$$;

-- The service's own schema: what it decided and why (for `explain`), nothing else.
CREATE SCHEMA IF NOT EXISTS toygres_actors;

CREATE TABLE IF NOT EXISTS toygres_actors.decisions (
    id BIGSERIAL PRIMARY KEY,
    instance_id UUID NOT NULL,
    k8s_name VARCHAR(255) NOT NULL,
    decided_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    old_actor_id TEXT,
    new_actor_id TEXT,
    trigger TEXT NOT NULL,
    replica TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS idx_decisions_instance ON toygres_actors.decisions (instance_id, decided_at DESC);
CREATE INDEX IF NOT EXISTS idx_decisions_decided_at ON toygres_actors.decisions (decided_at);

-- Which replica probes an instance on behalf of its actor (see src/lease.rs). The actor
-- renews the lease every few minutes from whichever replica runs its activity; a replica
-- writes health only while it holds the lease, so probing never doubles when the lease
-- moves between replicas.
CREATE TABLE IF NOT EXISTS toygres_actors.probe_leases (
    instance_id UUID PRIMARY KEY REFERENCES toygres_cms.instances(id) ON DELETE CASCADE,
    actor_id TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- record_health(): one round trip per health check. Fenced: it writes only while
-- p_actor_id is still the instance's current actor (and, when p_holder is given, while that
-- replica holds the instance's probe lease), and returns NULL otherwise (the prober then
-- stops without having written anything). Sets last_health_check, sets health_status
-- to the observed status unless p_keep_status (a failure below the consecutive-failure
-- threshold), appends the observed status to the history, and NOTIFYs `toygres_health`
-- when health_status changed. Returns the previous health_status.
CREATE OR REPLACE FUNCTION toygres_actors.record_health(
    p_instance_id uuid,
    p_actor_id text,
    p_holder text,
    p_observed text,
    p_keep_status boolean,
    p_postgres_version text,
    p_response_time_ms integer,
    p_error text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_old    text;
    v_new    text;
    v_name   text;
    v_now    timestamptz := clock_timestamp();
    -- %TYPE follows the column, whichever schema its enum lives in; the assignment from
    -- text converts (and rejects a label the enum does not have).
    v_status toygres_cms.instances.health_status%TYPE;
BEGIN
    SELECT health_status::text, k8s_name INTO v_old, v_name
      FROM toygres_cms.instances
     WHERE id = p_instance_id AND instance_actor_orchestration_id = p_actor_id
       AND (p_holder IS NULL OR EXISTS (
                SELECT 1 FROM toygres_actors.probe_leases l
                 WHERE l.instance_id = p_instance_id AND l.holder = p_holder))
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_new := CASE WHEN p_keep_status THEN v_old ELSE p_observed END;
    v_status := v_new;
    UPDATE toygres_cms.instances SET health_status = v_status, last_health_check = v_now
     WHERE id = p_instance_id;
    INSERT INTO toygres_cms.instance_health_checks
                (instance_id, status, postgres_version, response_time_ms, error_message, checked_at)
         VALUES (p_instance_id, p_observed, p_postgres_version, p_response_time_ms, left(p_error, 2000), v_now)
    ON CONFLICT ON CONSTRAINT unique_health_check_time DO NOTHING;
    IF v_old IS DISTINCT FROM v_new THEN
        PERFORM pg_notify('toygres_health', json_build_object(
            'k8s_name', left(v_name, 255), 'old', v_old, 'new', v_new, 'checked_at', v_now)::text);
    END IF;
    RETURN v_old;
END;
$$;
