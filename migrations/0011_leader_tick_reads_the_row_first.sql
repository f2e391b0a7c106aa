-- The leader's tick reads the leader row before it touches the legacy advisory lock.
-- 0004's tick tried the lock first, then read the row: a follower's tick took the lock for
-- an instant (while the lock was free), found another replica leading and unlocked it. A
-- tick of the real leader in that instant saw a lock holder that was not the `lock_pid` it
-- recorded, took it for an older release leading through the lock, and resigned (seen in
-- tests/failover.rs::partitioned_leader_is_replaced_and_writes_nothing_when_it_heals: the
-- healed replica re-registered, the new leader stepped down 0.06 s later, and the healed
-- one took a new term). Now every tick takes the row lock first, so ticks of this release
-- are serialised, and a replica touches the advisory lock only when it leads or is about
-- to take over: while another replica holds a live term it never tries it (it only gives
-- back a lock it kept from a term of its own). The older release's exclusion is unchanged:
-- a lock holder that is none of ours still makes our leader resign and keeps us out.
-- Additive: the same signature and results as 0004's.

CREATE OR REPLACE FUNCTION toygres_actors.leader_tick(
    p_name text, p_epoch bigint, p_ttl double precision, p_lock_key bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_now        timestamptz;
    v_row        toygres_actors.leader%ROWTYPE;
    v_found      boolean;
    v_mine       boolean;
    v_holder_pid integer;
    v_have_lock  boolean;
    v_term       bigint;
BEGIN
    SELECT * INTO v_row FROM toygres_actors.leader WHERE id = 1 FOR UPDATE;
    v_found := FOUND;
    v_now := clock_timestamp(); -- after the row lock: a wait for it does not age the term
    v_mine := v_found AND v_row.holder = p_name AND v_row.epoch = p_epoch;

    IF v_found AND NOT v_mine AND v_row.expires_at > v_now
       AND (v_row.session_pid IS NULL OR v_row.session_pid = pg_backend_pid()
            OR EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = v_row.session_pid)) THEN
        -- Someone else leads. Never try the lock; give back one kept from a term of ours.
        IF v_row.lock_pid = pg_backend_pid() OR v_row.session_pid = pg_backend_pid() THEN
            PERFORM pg_advisory_unlock(p_lock_key)
              FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 1
               AND pid = pg_backend_pid()
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND classid = ((p_lock_key >> 32) & 4294967295)::oid
               AND objid = (p_lock_key & 4294967295)::oid;
        END IF;
        RETURN NULL;
    END IF;

    -- We lead, or nobody holds a live term: the lock decides whether an older release leads.
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

    IF NOT v_have_lock AND v_holder_pid IS DISTINCT FROM v_row.lock_pid THEN
        -- An older release leads through the lock: resign if we hold the row, never lead.
        IF v_mine THEN
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
    IF v_mine AND v_row.expires_at > v_now THEN
        UPDATE toygres_actors.leader
           SET expires_at = v_now + make_interval(secs => p_ttl),
               lock_pid = CASE WHEN v_have_lock THEN pg_backend_pid() ELSE lock_pid END,
               session_pid = pg_backend_pid()
         WHERE id = 1;
        RETURN v_row.term;
    END IF;
    -- The term expired or its session is gone: take over with a new term (never the old one
    -- back, even for the replica that held it).
    UPDATE toygres_actors.leader
       SET holder = p_name, epoch = p_epoch, term = term + 1, elected_at = v_now,
           expires_at = v_now + make_interval(secs => p_ttl),
           lock_pid = CASE WHEN v_have_lock THEN pg_backend_pid() ELSE lock_pid END,
           session_pid = pg_backend_pid()
     WHERE id = 1
    RETURNING term INTO v_term;
    RETURN v_term;
END;
$$;
