-- What a health check needs to know about its instance, and whether it should run at all.
-- $1 = instance id
SELECT state::text AS state,
       instance_actor_orchestration_id AS actor_id,
       COALESCE(dns_connection_string, ip_connection_string) AS target,
       last_health_check
  FROM toygres_cms.instances
 WHERE id = $1
