-- Graceful stop of replica ($1 name, $2 epoch): its leases to the live replicas, and
-- draining. Returns the number of leases handed over.
SELECT toygres_actors.replica_hand_over($1, $2)
