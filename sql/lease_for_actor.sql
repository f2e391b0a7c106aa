-- Record actor $2 as the owner of instance $1's probe lease, for replica ($3, $4); $5 =
-- owner record TTL (s); $6 = take the lease (a new actor) rather than keep a live holder.
-- Returns (holder, holder_epoch), both NULL when the row no longer names the actor.
SELECT holder, holder_epoch FROM toygres_actors.lease_for_actor($1, $2, $3, $4, $5, $6)
