-- A new actor's start in one statement (migrations/0018): the term ($1 name, $2 epoch,
-- $3 term; NULLs: unfenced), the swap of instance $4's actor id from $5 to $6 while its
-- state is one of $7, the decision ($8 name, $9 action, $10 reason, $11 trigger,
-- $12 replica; NULL action: none), the probe lease for ($13, $14) with owner TTL $15 s
-- (NULL name: none), and the start ($17, the WorkItem as duroxide serialises it, visible
-- at $18) in the store's schema $16. Returns (swapped, holder, holder_epoch).
SELECT swapped, holder, holder_epoch
  FROM toygres_actors.start_actor($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                                  $14, $15, $16, $17, $18)
