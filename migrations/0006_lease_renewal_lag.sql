-- Renewal lag, from database timestamps: when each actor last renewed its probe lease, and
-- how late that renewal ran against its due time (the previous renewal + the renewal
-- period). The dispatcher's turn rate sets the actors' real period: when it falls behind,
-- renewals run late, and past the lease overlap an owner record expires while its actor
-- still runs. Additive; rows of older releases have NULLs.
ALTER TABLE toygres_actors.probe_leases ADD COLUMN IF NOT EXISTS renewed_at TIMESTAMPTZ;
ALTER TABLE toygres_actors.probe_leases ADD COLUMN IF NOT EXISTS renewal_lag_seconds DOUBLE PRECISION;

-- lease_for_actor (migrations/0004) for the actor's own renewal: the same record, plus the
-- renewal time and lag ($7 = the renewal period, s). lag_seconds is NULL on the first
-- renewal of an actor (nothing was due) and may be negative (a renewal right after a
-- continue-as-new). lease_for_actor stays for eager leases and older releases.
CREATE OR REPLACE FUNCTION toygres_actors.renew_lease(
    p_instance_id uuid, p_actor_id text, p_name text, p_epoch bigint,
    p_owner_ttl double precision, p_take boolean, p_renew_every double precision,
    OUT holder text, OUT holder_epoch bigint, OUT lag_seconds double precision)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_prev timestamptz;
BEGIN
    SELECT l.renewed_at INTO v_prev FROM toygres_actors.probe_leases l
     WHERE l.instance_id = p_instance_id AND l.actor_id = p_actor_id;
    SELECT r.holder, r.holder_epoch INTO holder, holder_epoch
      FROM toygres_actors.lease_for_actor(p_instance_id, p_actor_id, p_name, p_epoch,
                                          p_owner_ttl, p_take) r;
    IF holder IS NULL THEN
        RETURN;
    END IF;
    lag_seconds := extract(epoch FROM v_now - v_prev) - p_renew_every;
    UPDATE toygres_actors.probe_leases
       SET renewed_at = v_now, renewal_lag_seconds = lag_seconds
     WHERE instance_id = p_instance_id AND actor_id = p_actor_id;
END;
$$;
