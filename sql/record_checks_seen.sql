-- The checks a replica finished together, in one statement (migrations/0016): each fenced
-- as record_check_seen is. $1/$2 the holder (name, epoch); $3..$11 one array element per
-- check (instance, actor id, the state and target the probe was made against, observed,
-- keep status, version, response time, error). Returns a row per check it decided (written,
-- previous_status, row_state, row_target as record_check_seen); a check it left out (a held
-- row, a failed fence) is written alone with record_check_seen.
--
-- $12 true (`--check-commit async`) commits without waiting for the WAL flush, as
-- record_check_seen.sql explains.
SELECT instance_id, written, previous_status, row_state, row_target,
       CASE WHEN $12 THEN set_config('synchronous_commit', 'off', true) END AS async_commit
  FROM toygres_actors.record_checks_seen($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
