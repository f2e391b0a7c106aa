-- One instance for a reconcile that may start its actor: the row as instance_by_id.sql
-- reads it, and its probe target (a secret-bearing connection string, kept apart from the
-- row: a start opens its first probe's connection with it while the start commits, and
-- the first check's write is fenced on it). $1 = instance id
SELECT id, k8s_name, dns_name, state::text AS state, health_status::text AS health_status,
       instance_actor_orchestration_id AS actor_id, last_health_check, created_at, updated_at,
       (COALESCE(dns_connection_string, ip_connection_string) IS NOT NULL) AS has_target,
       COALESCE(dns_connection_string, ip_connection_string) AS target
  FROM toygres_cms.instances
 WHERE id = $1
