-- The one statement of a health check under a probe lease (migrations/0008): fenced on
-- actor id, holder, epoch and the holder's liveness, and on the state and target the probe
-- was made against. Returns written (NULL: refused; false: the row changed, see row_state
-- and row_target; true: written) and the row as it is now.
SELECT written, previous_status, row_state, row_target
  FROM toygres_actors.record_check_seen($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
