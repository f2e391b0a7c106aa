-- The leader's tick ($1 name, $2 epoch, $3 TTL seconds, $4 legacy advisory lock key):
-- the term we lead in, or NULL (see migrations/0004).
SELECT toygres_actors.leader_tick($1, $2, $3, $4)
