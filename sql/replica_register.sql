-- Register replica ($1 name, $2 epoch) live for $3 seconds, release $4; the newest
-- registration of a name wins (see migrations/0004).
SELECT toygres_actors.replica_register($1, $2, $3, $4)
