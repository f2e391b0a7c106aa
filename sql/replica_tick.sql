-- One replica tick (heartbeat, take back our own leases of an earlier epoch, claim orphaned
-- leases, balance): ($1 name, $2 epoch, $3 TTL seconds, $4 most leases to take from another
-- replica, $5 claim other replicas' orphaned leases — false for one TTL after we rejoined,
-- see migrations/0007). Returns status, claimed, stolen.
SELECT status, claimed, stolen FROM toygres_actors.replica_tick($1, $2, $3, $4, $5)
