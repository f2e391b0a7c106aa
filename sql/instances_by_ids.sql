-- Many instances by id at once (the set-based reconcile of a storm): $1 = uuid[]. Ids
-- whose row is gone are simply absent.
SELECT id, k8s_name, dns_name, state::text AS state, health_status::text AS health_status,
       instance_actor_orchestration_id AS actor_id, last_health_check, created_at, updated_at,
       (COALESCE(dns_connection_string, ip_connection_string) IS NOT NULL) AS has_target
  FROM toygres_cms.instances
 WHERE id = ANY($1)
