-- Enqueue one Duroxide work item ($1 orchestration instance id, $2 the WorkItem as
-- duroxide serialises it, $3 visible at) through duroxide-pg's own procedure, inside our
-- transaction — so a start commits together with the actor-id swap and the leader's term
-- check. Pinned to duroxide 0.1.32 / duroxide-pg 0.1.38; tests/actors.rs compares what this
-- writes with what duroxide's Client writes.
SELECT __DUROXIDE__.enqueue_orchestrator_work($1, $2, $3, NULL, NULL, NULL)
