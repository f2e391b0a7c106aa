-- 0014_retention.sql — the tables that only grew get a retention (pruned by the leader with
-- the rest, see src/duties.rs), and a replica whose row was pruned is told so correctly.
--
-- * toygres_actors.replicas keeps one row per replica name ever seen (a rollout of a
--   Deployment adds a name per pod), and every replica_tick counts over it. The leader now
--   deletes the rows of replicas gone for longer than a grace window that hold no probe
--   lease (sql/prune_replicas.sql). A replica frozen for longer than that and waking up
--   finds no row of its name: that is an expiry (register again under a new epoch), not a
--   newer process with its name, which replica_tick used to answer ('superseded': stop
--   probing for good). The body is migrations/0010's with that one condition.
-- * toygres_cms.actor_restart_requests keeps every handled request: the leader deletes the
--   ones handled longer ago than the history retention (sql/prune_restart_requests.sql),
--   found through the index below.
-- Additive: same signatures and results as before.

CREATE INDEX IF NOT EXISTS idx_actor_restart_requests_handled
    ON toygres_cms.actor_restart_requests (handled_at) WHERE handled_at IS NOT NULL;

CREATE OR REPLACE FUNCTION toygres_actors.replica_tick(
    p_name text, p_epoch bigint, p_ttl double precision, p_max_move integer,
    p_claim_others boolean,
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
    v_own_left boolean;
BEGIN
    claimed := 0;
    stolen := 0;
    UPDATE toygres_actors.replicas
       SET heartbeat_at = v_now, expires_at = v_now + make_interval(secs => p_ttl)
     WHERE name = p_name AND epoch = p_epoch AND expires_at > v_now AND NOT draining;
    IF NOT FOUND THEN
        SELECT epoch INTO v_epoch FROM toygres_actors.replicas WHERE name = p_name;
        -- No row at all: ours expired and was pruned; only another epoch's row supersedes.
        status := CASE WHEN v_epoch IS NOT NULL AND v_epoch <> p_epoch
                       THEN 'superseded' ELSE 'expired' END;
        RETURN;
    END IF;
    status := 'ok';

    -- Our own leases from an earlier epoch of this name: ours again (we are the newest
    -- registration of the name, or the heartbeat above would have failed). Two range
    -- conditions rather than <>, so that the (holder, holder_epoch) index finds nothing
    -- quickly on every ordinary tick (epochs are random, not increasing).
    WITH pick AS (
        SELECT instance_id FROM toygres_actors.probe_leases
         WHERE holder = p_name
           AND (holder_epoch < p_epoch OR holder_epoch > p_epoch OR holder_epoch IS NULL)
           FOR UPDATE SKIP LOCKED)
    UPDATE toygres_actors.probe_leases l
       SET holder_epoch = p_epoch, assigned_at = clock_timestamp()
      FROM pick WHERE l.instance_id = pick.instance_id;
    GET DIAGNOSTICS claimed = ROW_COUNT;
    -- SKIP LOCKED passes over own rows a check or a renewal holds this instant: any left?
    PERFORM 1 FROM toygres_actors.probe_leases
     WHERE holder = p_name
       AND (holder_epoch < p_epoch OR holder_epoch > p_epoch OR holder_epoch IS NULL)
     LIMIT 1;
    v_own_left := FOUND;

    SELECT count(*) INTO v_live FROM toygres_actors.replicas
     WHERE expires_at > v_now AND NOT draining;

    -- Orphaned leases: no live replica has the holder's name. Spread over the live
    -- replicas: each takes its share, SKIP LOCKED so concurrent claimers never wait.
    IF p_claim_others THEN
        SELECT count(*) INTO v_orphans
          FROM toygres_actors.probe_leases l
         WHERE NOT EXISTS (SELECT 1 FROM toygres_actors.replicas r
                            WHERE r.name = l.holder AND r.expires_at > v_now AND NOT r.draining);
        IF v_orphans > 0 THEN
            v_share := ceil(v_orphans::numeric / greatest(v_live, 1));
            WITH pick AS (
                SELECT l.instance_id
                  FROM toygres_actors.probe_leases l
                 WHERE NOT EXISTS (SELECT 1 FROM toygres_actors.replicas r
                                    WHERE r.name = l.holder AND r.expires_at > v_now
                                      AND NOT r.draining)
                 LIMIT v_share
                   FOR UPDATE SKIP LOCKED)
            UPDATE toygres_actors.probe_leases l
               SET holder = p_name, holder_epoch = p_epoch, assigned_at = clock_timestamp()
              FROM pick WHERE l.instance_id = pick.instance_id;
            GET DIAGNOSTICS v_orphans = ROW_COUNT;
            claimed := claimed + v_orphans;
        END IF;
    END IF;

    -- Balance: bounded moves per tick, from the most loaded live replica to this one.
    -- Not while own leases of an earlier epoch are left: this replica's count is short by
    -- them, so it would take leases from a peer that its next tick's reclaim then makes
    -- surplus, and the peer's balancer takes them back (a swap).
    IF v_live > 1 AND NOT v_own_left THEN
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
