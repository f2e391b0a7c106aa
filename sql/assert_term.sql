-- Inside a leader's write transaction: raises unless ($1 name, $2 epoch) leads in term $3,
-- and holds a share lock on the leader row until commit (a takeover waits for it).
SELECT toygres_actors.assert_term($1, $2, $3)
