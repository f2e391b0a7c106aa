-- 0004_replicas_and_terms.sql — replica liveness, probe leases that follow it, a leader
-- row with a term, and fences that check all of it atomically. Additive and idempotent.
--
-- The model (README, "Replicas, leases and leadership"):
-- * A replica is (name, epoch): its configured name plus a random per-process epoch. It
--   heartbeats its row every few seconds; the row is live while expires_at is in the future.
--   Registering a name again replaces the epoch: the newest process with a name wins.
-- * A probe lease (instance → holder name + epoch) is valid while that exact (name, epoch)
--   is live. Leases of a replica that is gone are claimed by the live ones.
-- * One leader row: holder (name, epoch), term, expires_at. The leader renews it; anyone
--   may take it over once it expired, and every takeover starts a new term. Writes the
--   leader makes (actor-id swaps, Duroxide starts and cancels) check the term in the same
--   transaction, under a lock that a takeover must wait for.

CREATE TABLE IF NOT EXISTS toygres_actors.replicas (
    name TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    -- Set by a graceful stop once it handed its leases over: no longer takes any.
    draining BOOLEAN NOT NULL DEFAULT false,
    version TEXT
);

ALTER TABLE toygres_actors.probe_leases ADD COLUMN IF NOT EXISTS holder_epoch BIGINT;
ALTER TABLE toygres_actors.probe_leases ADD COLUMN IF NOT EXISTS assigned_at TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS idx_probe_leases_holder
    ON toygres_actors.probe_leases (holder, holder_epoch, assigned_at);

-- Evidence: which replica (name and epoch) wrote each health history row. Nullable: rows
-- written before this migration, and by older releases, have none.
ALTER TABLE toygres_cms.instance_health_checks ADD COLUMN IF NOT EXISTS replica TEXT;
ALTER TABLE toygres_cms.instance_health_checks ADD COLUMN IF NOT EXISTS replica_epoch BIGINT;

CREATE TABLE IF NOT EXISTS toygres_actors.leader (
    id INT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    term BIGINT NOT NULL,
    elected_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    -- Backend pid of the session on which a leader of this release holds the legacy
    -- advisory lock (see leader_tick): tells our own stale lock from an older release's.
    lock_pid INT,
    -- Backend pid of the leader's own session, renewed every tick: when that session is gone
    -- (the process died and the server closed its socket) a follower takes over at once
    -- instead of waiting out the TTL. A frozen or cut-off leader keeps its session: then
    -- the TTL decides.
    session_pid INT
);

-- Register (or re-register) a replica with a new epoch. Returns the row's expiry.
CREATE OR REPLACE FUNCTION toygres_actors.replica_register(
    p_name text, p_epoch bigint, p_ttl double precision, p_version text)
RETURNS timestamptz LANGUAGE sql AS $$
    INSERT INTO toygres_actors.replicas AS r (name, epoch, started_at, heartbeat_at, expires_at, draining, version)
    VALUES (p_name, p_epoch, clock_timestamp(), clock_timestamp(),
            clock_timestamp() + make_interval(secs => p_ttl), false, p_version)
    ON CONFLICT (name) DO UPDATE
       SET epoch = EXCLUDED.epoch, started_at = EXCLUDED.started_at,
           heartbeat_at = EXCLUDED.heartbeat_at, expires_at = EXCLUDED.expires_at,
           draining = false, version = EXCLUDED.version
    RETURNING r.expires_at
$$;

-- One replica tick: heartbeat; then, while live, claim a fair share of the leases whose
-- holder is gone, and take leases from the most loaded live replica while this one holds
-- fewer than its fair share (at most p_max_move each). Returns
-- (status 'ok' | 'expired' | 'superseded', claimed, stolen).
CREATE OR REPLACE FUNCTION toygres_actors.replica_tick(
    p_name text, p_epoch bigint, p_ttl double precision, p_max_move integer,
    OUT status text, OUT claimed integer, OUT stolen integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := clock_timestamp();
    v_epoch   bigint;
    v_live    integer;
    v_orphans integer;
    v_total   integer;
    v_mine    integer;
    v_share   integer;
    v_top     record;
BEGIN
    claimed := 0;
    stolen := 0;
    UPDATE toygres_actors.replicas
       SET heartbeat_at = v_now, expires_at = v_now + make_interval(secs => p_ttl)
     WHERE name = p_name AND epoch = p_epoch AND expires_at > v_now AND NOT draining;
    IF NOT FOUND THEN
        SELECT epoch INTO v_epoch FROM toygres_actors.replicas WHERE name = p_name;
        status := CASE WHEN v_epoch IS DISTINCT FROM p_epoch THEN 'superseded' ELSE 'expired' END;
        RETURN;
    END IF;
    status := 'ok';

    SELECT count(*) INTO v_live FROM toygres_actors.replicas
     WHERE expires_at > v_now AND NOT draining;

    -- Orphaned leases: no live (name, epoch) holds them. Spread over the live replicas:
    -- each takes its share, SKIP LOCKED so concurrent claimers never wait on each other.
    SELECT count(*) INTO v_orphans
      FROM toygres_actors.probe_leases l
     WHERE NOT EXISTS (SELECT 1 FROM toygres_actors.replicas r
                        WHERE r.name = l.holder AND r.epoch = l.holder_epoch
                          AND r.expires_at > v_now AND NOT r.draining);
    IF v_orphans > 0 THEN
        v_share := ceil(v_orphans::numeric / greatest(v_live, 1));
        WITH pick AS (
            SELECT l.instance_id
              FROM toygres_actors.probe_leases l
             WHERE NOT EXISTS (SELECT 1 FROM toygres_actors.replicas r
                                WHERE r.name = l.holder AND r.epoch = l.holder_epoch
                                  AND r.expires_at > v_now AND NOT r.draining)
             LIMIT v_share
               FOR UPDATE SKIP LOCKED)
        UPDATE toygres_actors.probe_leases l
           SET holder = p_name, holder_epoch = p_epoch, assigned_at = clock_timestamp()
          FROM pick WHERE l.instance_id = pick.instance_id;
        GET DIAGNOSTICS claimed = ROW_COUNT;
    END IF;

    -- Balance: bounded moves per tick, from the most loaded live replica to this one.
    IF v_live > 1 THEN
        SELECT count(*) INTO v_total
          FROM toygres_actors.probe_leases l
          JOIN toygres_actors.replicas r
            ON r.name = l.holder AND r.epoch = l.holder_epoch
         WHERE r.expires_at > v_now AND NOT r.draining;
        SELECT count(*) INTO v_mine FROM toygres_actors.probe_leases
         WHERE holder = p_name AND holder_epoch = p_epoch;
        v_share := v_total / v_live;
        IF v_mine < v_share THEN
            SELECT l.holder, l.holder_epoch, count(*) AS n INTO v_top
              FROM toygres_actors.probe_leases l
              JOIN toygres_actors.replicas r
                ON r.name = l.holder AND r.epoch = l.holder_epoch
             WHERE r.expires_at > v_now AND NOT r.draining AND l.holder <> p_name
             GROUP BY l.holder, l.holder_epoch
             ORDER BY n DESC, l.holder
             LIMIT 1;
            IF FOUND AND v_top.n > v_share THEN
                WITH pick AS (
                    SELECT instance_id FROM toygres_actors.probe_leases
                     WHERE holder = v_top.holder AND holder_epoch = v_top.holder_epoch
                     ORDER BY random()
                     LIMIT least(p_max_move, v_share - v_mine, v_top.n - v_share)
                       FOR UPDATE SKIP LOCKED)
                UPDATE toygres_actors.probe_leases l
                   SET holder = p_name, holder_epoch = p_epoch, assigned_at = clock_timestamp()
                  FROM pick WHERE l.instance_id = pick.instance_id;
                GET DIAGNOSTICS stolen = ROW_COUNT;
            END IF;
        END IF;
    END IF;
END;
$$;

-- Graceful stop: hand every lease of (p_name, p_epoch) to the live replicas, round robin,
-- and mark this replica draining (it takes no lease from now on). Returns leases handed.
-- With no other live replica, the leases stay and are claimed by whoever comes next.
CREATE OR REPLACE FUNCTION toygres_actors.replica_hand_over(p_name text, p_epoch bigint)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := clock_timestamp();
    v_handed integer := 0;
BEGIN
    UPDATE toygres_actors.replicas SET draining = true, expires_at = v_now
     WHERE name = p_name AND epoch = p_epoch;
    PERFORM 1 FROM toygres_actors.probe_leases
      WHERE holder = p_name AND holder_epoch = p_epoch FOR UPDATE;
    WITH targets AS (
        SELECT name, epoch, (row_number() OVER (ORDER BY name) - 1) AS k, count(*) OVER () AS n
          FROM toygres_actors.replicas
         WHERE expires_at > v_now AND NOT draining AND name <> p_name),
    mine AS (
        SELECT instance_id, (row_number() OVER (ORDER BY instance_id) - 1) AS k
          FROM toygres_actors.probe_leases
         WHERE holder = p_name AND holder_epoch = p_epoch)
    UPDATE toygres_actors.probe_leases l
       SET holder = t.name, holder_epoch = t.epoch, assigned_at = clock_timestamp()
      FROM mine m JOIN targets t ON t.k = m.k % t.n
     WHERE l.instance_id = m.instance_id;
    GET DIAGNOSTICS v_handed = ROW_COUNT;
    RETURN v_handed;
END;
$$;

-- A new actor's first lease, or an actor's renewal: conditional on the row naming that
-- actor (FOR SHARE: a concurrent swap waits for us, or we see its result). A new actor
-- (p_take) takes the lease for the replica that started it; a renewal keeps a live holder
-- and only records the owner. Returns the holder (name, epoch) after the call, or nothing
-- when the row no longer names the actor.
CREATE OR REPLACE FUNCTION toygres_actors.lease_for_actor(
    p_instance_id uuid, p_actor_id text, p_name text, p_epoch bigint,
    p_owner_ttl double precision, p_take boolean,
    OUT holder text, OUT holder_epoch bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM 1 FROM toygres_cms.instances
      WHERE id = p_instance_id AND instance_actor_orchestration_id = p_actor_id FOR SHARE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO toygres_actors.probe_leases AS l
                (instance_id, actor_id, holder, holder_epoch, expires_at, assigned_at)
    VALUES (p_instance_id, p_actor_id, p_name, p_epoch,
            v_now + make_interval(secs => p_owner_ttl), v_now)
    ON CONFLICT (instance_id) DO UPDATE
       SET actor_id = EXCLUDED.actor_id,
           expires_at = EXCLUDED.expires_at,
           holder = CASE WHEN p_take OR NOT EXISTS (
                              SELECT 1 FROM toygres_actors.replicas r
                               WHERE r.name = l.holder AND r.epoch = l.holder_epoch
                                 AND r.expires_at > v_now AND NOT r.draining)
                         THEN EXCLUDED.holder ELSE l.holder END,
           holder_epoch = CASE WHEN p_take OR NOT EXISTS (
                              SELECT 1 FROM toygres_actors.replicas r
                               WHERE r.name = l.holder AND r.epoch = l.holder_epoch
                                 AND r.expires_at > v_now AND NOT r.draining)
                         THEN EXCLUDED.holder_epoch ELSE l.holder_epoch END,
           assigned_at = CASE WHEN p_take OR l.actor_id IS DISTINCT FROM EXCLUDED.actor_id
                              OR NOT EXISTS (
                              SELECT 1 FROM toygres_actors.replicas r
                               WHERE r.name = l.holder AND r.epoch = l.holder_epoch
                                 AND r.expires_at > v_now AND NOT r.draining)
                         THEN v_now ELSE l.assigned_at END
    RETURNING l.holder, l.holder_epoch INTO holder, holder_epoch;
END;
$$;

-- The one write of a health check, fenced atomically: the row names p_actor_id, the lease
-- names (p_holder, p_epoch), and that replica's heartbeat is live — checked under locks a
-- lease takeover (UPDATE of the lease row) and a swap of the actor id must wait for, at
-- the moment of the write (clock_timestamp, not the transaction's start). The replica row
-- itself is not locked: a heartbeat never waits for checks. Returns the
-- previous health_status, or NULL when anything no longer holds (nothing is written).
CREATE OR REPLACE FUNCTION toygres_actors.record_check(
    p_instance_id uuid,
    p_actor_id text,
    p_holder text,
    p_epoch bigint,
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
    v_now    timestamptz;
    v_status toygres_cms.instances.health_status%TYPE;
BEGIN
    SELECT i.health_status::text, i.k8s_name INTO v_old, v_name
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
        RETURN NULL;
    END IF;
    v_new := CASE WHEN p_keep_status THEN v_old ELSE p_observed END;
    v_status := v_new;
    UPDATE toygres_cms.instances SET health_status = v_status, last_health_check = v_now
     WHERE id = p_instance_id;
    INSERT INTO toygres_cms.instance_health_checks
                (instance_id, status, postgres_version, response_time_ms, error_message, checked_at,
                 replica, replica_epoch)
         VALUES (p_instance_id, p_observed, p_postgres_version, p_response_time_ms, left(p_error, 2000), v_now,
                 p_holder, p_epoch)
    ON CONFLICT ON CONSTRAINT unique_health_check_time DO NOTHING;
    IF v_old IS DISTINCT FROM v_new THEN
        PERFORM pg_notify('toygres_health', json_build_object(
            'k8s_name', left(v_name, 255), 'old', v_old, 'new', v_new, 'checked_at', v_now)::text);
    END IF;
    RETURN v_old;
END;
$$;

-- The leader's tick, on its own session (the legacy advisory lock is session-level).
-- Rolling upgrade: releases before this one lead by holding advisory lock p_lock_key. A
-- replica of this release never leads while a session it does not know holds that lock;
-- a leader of this release takes the lock when it can, so an older replica cannot lead
-- beside it, and records its session's pid so a successor can tell our stale lock (a
-- frozen ex-leader's session) from an older release's. Returns the term this replica
-- leads in, or NULL. A leader whose term expired (frozen, partitioned) gets a new term,
-- never the old one back.
CREATE OR REPLACE FUNCTION toygres_actors.leader_tick(
    p_name text, p_epoch bigint, p_ttl double precision, p_lock_key bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_now        timestamptz := clock_timestamp();
    v_row        toygres_actors.leader%ROWTYPE;
    v_found      boolean;
    v_holder_pid integer;
    v_have_lock  boolean;
    v_term       bigint;
BEGIN
    SELECT pid INTO v_holder_pid FROM pg_locks
     WHERE locktype = 'advisory' AND granted AND objsubid = 1
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND classid = ((p_lock_key >> 32) & 4294967295)::oid
       AND objid = (p_lock_key & 4294967295)::oid
     LIMIT 1;
    IF v_holder_pid IS NULL THEN
        v_have_lock := pg_try_advisory_lock(p_lock_key);
        IF NOT v_have_lock THEN
            RETURN NULL; -- someone took it between our look and our try: look again next tick
        END IF;
    ELSE
        v_have_lock := v_holder_pid = pg_backend_pid();
    END IF;

    SELECT * INTO v_row FROM toygres_actors.leader WHERE id = 1 FOR UPDATE;
    v_found := FOUND;

    IF NOT v_have_lock AND v_holder_pid IS DISTINCT FROM v_row.lock_pid THEN
        -- An older release leads through the lock: resign if we hold the row, never lead.
        IF v_found AND v_row.holder = p_name AND v_row.epoch = p_epoch THEN
            UPDATE toygres_actors.leader SET expires_at = v_now WHERE id = 1;
        END IF;
        RETURN NULL;
    END IF;

    IF NOT v_found THEN
        INSERT INTO toygres_actors.leader (id, holder, epoch, term, elected_at, expires_at, lock_pid, session_pid)
        VALUES (1, p_name, p_epoch, 1, v_now, v_now + make_interval(secs => p_ttl),
                CASE WHEN v_have_lock THEN pg_backend_pid() END, pg_backend_pid());
        RETURN 1;
    END IF;
    IF v_row.holder = p_name AND v_row.epoch = p_epoch AND v_row.expires_at > v_now THEN
        UPDATE toygres_actors.leader
           SET expires_at = v_now + make_interval(secs => p_ttl),
               lock_pid = CASE WHEN v_have_lock THEN pg_backend_pid() ELSE lock_pid END,
               session_pid = pg_backend_pid()
         WHERE id = 1;
        RETURN v_row.term;
    END IF;
    IF v_row.expires_at <= v_now
       OR (v_row.session_pid IS NOT NULL AND v_row.session_pid <> pg_backend_pid()
           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = v_row.session_pid)) THEN
        UPDATE toygres_actors.leader
           SET holder = p_name, epoch = p_epoch, term = term + 1, elected_at = v_now,
               expires_at = v_now + make_interval(secs => p_ttl),
               lock_pid = CASE WHEN v_have_lock THEN pg_backend_pid() ELSE lock_pid END,
               session_pid = pg_backend_pid()
         WHERE id = 1
        RETURNING term INTO v_term;
        RETURN v_term;
    END IF;
    -- Someone else leads. Do not sit on the lock they need to keep older releases out.
    IF v_have_lock THEN
        PERFORM pg_advisory_unlock(p_lock_key);
    END IF;
    RETURN NULL;
END;
$$;

-- Resign (graceful stop): let a follower take over at its next tick.
CREATE OR REPLACE FUNCTION toygres_actors.leader_resign(p_name text, p_epoch bigint, p_term bigint)
RETURNS void LANGUAGE sql AS $$
    UPDATE toygres_actors.leader SET expires_at = clock_timestamp()
     WHERE id = 1 AND holder = p_name AND epoch = p_epoch AND term = p_term
$$;

-- The term fence: raises unless (p_name, p_epoch) leads in term p_term right now. Takes a
-- share lock on the leader row that a takeover (an UPDATE of that row) must wait for, so
-- nothing this transaction writes can land after another replica's term began.
CREATE OR REPLACE FUNCTION toygres_actors.assert_term(p_name text, p_epoch bigint, p_term bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM toygres_actors.leader
      WHERE id = 1 AND holder = p_name AND epoch = p_epoch AND term = p_term
        AND expires_at > clock_timestamp()
        FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'toygres-actors: term % of % is over', p_term, p_name
            USING ERRCODE = 'TA001';
    END IF;
END;
$$;
