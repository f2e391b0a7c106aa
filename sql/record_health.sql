-- The one write of a health check (fenced; see migrations/0003). Returns the previous
-- health_status, or NULL when this actor (or this replica's probe lease) is no longer current.
SELECT toygres_actors.record_health($1, $2, $3, $4, $5, $6, $7, $8)
