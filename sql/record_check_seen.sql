-- The one statement of a health check under a probe lease (migrations/0008): fenced on
-- actor id, holder, epoch and the holder's liveness, and on the state and target the probe
-- was made against. Returns written (NULL: refused; false: the row changed, see row_state
-- and row_target; true: written) and the row as it is now.
--
-- $12 true (`--check-commit async`, the default) commits this one transaction without
-- waiting for the WAL flush (synchronous_commit off, local to it). A health row is an
-- observation the next check repeats: a PostgreSQL crash can lose the last fraction of a
-- second of them (never a lease, an actor id or a decision, which commit durably, and a
-- durable commit after them flushes them too), and no check waits on a disk flush. The
-- fences are the same either way.
SELECT written, previous_status, row_state, row_target,
       CASE WHEN $12 THEN set_config('synchronous_commit', 'off', true) END AS async_commit
  FROM toygres_actors.record_check_seen($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
