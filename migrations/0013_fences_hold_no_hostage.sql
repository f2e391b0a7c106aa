-- 0013_fences_hold_no_hostage.sql — no lock of ours outlives its owner; a CMS row someone
-- else holds never costs the leader its term.
--
-- Until now a fenced transaction took FOR SHARE on the one leader row (assert_term) and
-- every leader tick took FOR UPDATE on it. A fence waiting on a CMS row (a psql session, a
-- slow CMS transaction holding one instance) then held up every tick behind it: the leader
-- could not renew and stepped down, and no replica could take over until the row was
-- released (measured: leaderless for a whole 84 s hold). And a leader frozen in the middle
-- of a fenced transaction kept its share lock for as long as its session lived.
--
-- Now:
-- - a fence takes FOR KEY SHARE, which a renewal (a non-key UPDATE: FOR NO KEY UPDATE) does
--   not wait for, and a takeover (which first locks the row FOR UPDATE) does;
-- - a fence bounds every lock wait of its transaction (lock_timeout 2 s, local to it): a CMS
--   row held by someone else fails that one reconcile (55P03), which is retried shortly, and
--   never keeps a fence open for longer;
-- - the service's sessions end a transaction left idle for 5 s (their startup options), so a
--   frozen or partitioned client's fence goes, with its lock, before its term's TTL (10 s)
--   runs out: 2 s lock wait + 5 s idle < 10 s.
-- Additive: same signatures and results as before.

CREATE OR REPLACE FUNCTION toygres_actors.assert_term(p_name text, p_epoch bigint, p_term bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lock_timeout', '2s', true);
    PERFORM 1 FROM toygres_actors.leader
      WHERE id = 1 AND holder = p_name AND epoch = p_epoch AND term = p_term
        AND expires_at > clock_timestamp()
        FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'toygres-actors: term % of % is over', p_term, p_name
            USING ERRCODE = 'TA001';
    END IF;
END;
$$;

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
    -- No wait of a tick outlives its client's timeout (3 s): a tick that cannot get the row
    -- within a second fails (55P03) and leaves no backend waiting; the next tick tries again.
    PERFORM set_config('lock_timeout', '1s', true);
    -- FOR NO KEY UPDATE: ticks queue behind each other, fences (FOR KEY SHARE) do not block a
    -- renewal, and a renewal does not block them.
    SELECT * INTO v_row FROM toygres_actors.leader WHERE id = 1 FOR NO KEY UPDATE;
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
    -- back, even for the replica that held it). A takeover conflicts with every fence of the
    -- old term still open (FOR UPDATE against their FOR KEY SHARE): it waits for them, at
    -- most the lock timeout, and otherwise fails and tries again at the next tick. A fence
    -- whose client froze ends within the sessions' idle-in-transaction timeout.
    PERFORM 1 FROM toygres_actors.leader WHERE id = 1 FOR UPDATE;
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
