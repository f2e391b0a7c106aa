-- Drop instance $1's probe lease if it still names actor $2 (that actor exited).
DELETE FROM toygres_actors.probe_leases WHERE instance_id = $1 AND actor_id = $2
