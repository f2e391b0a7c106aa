-- The one write of a health check under a probe lease (fenced on actor id, holder, epoch
-- and the holder's liveness; see migrations/0004). Returns the previous health_status, or
-- NULL when any of them no longer holds.
SELECT toygres_actors.record_check($1, $2, $3, $4, $5, $6, $7, $8, $9)
