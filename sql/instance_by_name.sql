-- NAME is a k8s_name, or the dns_name of a live instance (the k8s_name wins).
SELECT id, k8s_name, dns_name, state::text AS state, health_status::text AS health_status,
       instance_actor_orchestration_id AS actor_id, last_health_check, created_at, updated_at,
       (COALESCE(dns_connection_string, ip_connection_string) IS NOT NULL) AS has_target
  FROM toygres_cms.instances
 WHERE k8s_name = $1
    OR (dns_name = $1 AND state::text IN ('creating', 'running'))
 ORDER BY (k8s_name = $1) DESC, created_at DESC
 LIMIT 1
