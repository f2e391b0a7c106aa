-- Probe leases this replica still holds (from its previous run), for instances whose row
-- still names the leasing actor: (instance, actor, last check, seconds of lease left).
SELECT l.instance_id, l.actor_id, i.last_health_check,
       extract(epoch FROM l.expires_at - now())::float8 AS remaining
  FROM toygres_actors.probe_leases l
  JOIN toygres_cms.instances i
    ON i.id = l.instance_id AND i.instance_actor_orchestration_id = l.actor_id
 WHERE l.holder = $1 AND l.expires_at > now()
