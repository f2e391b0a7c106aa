-- Resign term $3 of ($1 name, $2 epoch): a follower takes over at its next tick.
SELECT toygres_actors.leader_resign($1, $2, $3)
