-- Take or renew the probe lease of instance $1 for actor $2 on replica $3, for $4 seconds.
INSERT INTO toygres_actors.probe_leases (instance_id, actor_id, holder, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
ON CONFLICT (instance_id) DO UPDATE
   SET actor_id = EXCLUDED.actor_id, holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
