SELECT checked_at, status, response_time_ms, postgres_version, error_message
  FROM toygres_cms.instance_health_checks
 WHERE instance_id = $1
 ORDER BY checked_at DESC
 LIMIT 10
