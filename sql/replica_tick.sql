-- One replica tick (heartbeat, claim orphaned leases, balance): ($1 name, $2 epoch, $3 TTL
-- seconds, $4 most leases to take from another replica). Returns status, claimed, stolen.
SELECT status, claimed, stolen FROM toygres_actors.replica_tick($1, $2, $3, $4)
