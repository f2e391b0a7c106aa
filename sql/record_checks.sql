-- Many health checks under probe leases in one call and one transaction (migrations/0008):
-- each element fenced exactly as record_check.sql. $1..$9 are parallel arrays (instance,
-- actor, holder, epoch, observed, keep status, version, response ms, error). Returns the
-- previous health_status per element, NULL where the fence no longer holds.
SELECT toygres_actors.record_checks($1, $2, $3, $4, $5, $6, $7, $8, $9)
