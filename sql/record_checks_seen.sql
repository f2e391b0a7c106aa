-- Many checks of one holder (migrations/0008) in one statement and one commit, each fenced
-- and answered as record_check_seen's, or busy (locked by someone else: write it alone):
-- $1 holder, $2 epoch, then one array per field.
SELECT instance_id, busy, written, previous_status, row_state, row_target
  FROM toygres_actors.record_checks_seen($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
