-- The actor's renewal of its probe lease (migrations/0006): lease_for_actor's record plus
-- the renewal's lag. $1 instance, $2 actor id, $3/$4 replica (name, epoch), $5 owner TTL
-- (s), $6 take, $7 renewal period (s). Returns (holder, holder_epoch, lag_seconds).
SELECT holder, holder_epoch, lag_seconds
  FROM toygres_actors.renew_lease($1, $2, $3, $4, $5, $6, $7)
