-- Replicas that come back keep their leases. A lease belongs to its holder's *name*: when
-- that name is live again under a new epoch (the process was cut off or frozen longer than
-- the TTL and registered again, or it restarted under the same name), the lease goes back
-- to it instead of to whichever replica or actor renewal touches it first. Before this, a
-- database outage that outlasted the TTL ended in a reshuffle: the first replica back took
-- every lease as orphaned, and the others then took half of them back to balance.
--
-- Orphaned now means: no live replica has the holder's name. Additive: the functions keep
-- their signatures (older releases call them unchanged); replica_tick gains an overload with
-- p_claim_others, which a replica that has just rejoined sets false for one TTL, so that
-- peers cut off by the same outage can come back and take their own leases first.

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

-- The four-argument form of older releases: claims others' orphans at once.
CREATE OR REPLACE FUNCTION toygres_actors.replica_tick(
    p_name text, p_epoch bigint, p_ttl double precision, p_max_move integer,
    OUT status text, OUT claimed integer, OUT stolen integer)
LANGUAGE sql AS $$
    SELECT t.status, t.claimed, t.stolen
      FROM toygres_actors.replica_tick(p_name, p_epoch, p_ttl, p_max_move, true) t
$$;

-- An actor's lease record (eager lease, renewal). p_take (a new actor's eager lease): this
-- replica takes it, as before. A renewal no longer takes anything: a holder whose name is
-- live again under a newer epoch keeps the lease (moved to that epoch), and a holder whose
-- name is not live keeps it until a replica tick claims it — orphans are claimed in one
-- place, by the ticks' fair share and their rejoin rule, not by whichever replica happens to
-- run an overdue renewal first when the database comes back.
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
           (holder, holder_epoch, assigned_at) = (
               SELECT CASE WHEN p_take THEN EXCLUDED.holder ELSE l.holder END,
                      CASE WHEN p_take THEN EXCLUDED.holder_epoch
                           ELSE coalesce(live.epoch, l.holder_epoch) END,
                      CASE WHEN p_take OR l.actor_id IS DISTINCT FROM EXCLUDED.actor_id
                                OR live.epoch IS DISTINCT FROM l.holder_epoch AND live.epoch IS NOT NULL
                           THEN v_now ELSE l.assigned_at END
                 FROM (SELECT (SELECT r.epoch FROM toygres_actors.replicas r
                                WHERE r.name = l.holder AND r.expires_at > v_now
                                  AND NOT r.draining) AS epoch) live)
    RETURNING l.holder, l.holder_epoch INTO holder, holder_epoch;
END;
$$;
