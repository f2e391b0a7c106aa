-- Remove actor orchestrations outright — instance, executions, history, queued work, locks —
-- through duroxide-pg's own procedure, inside our transaction (fenced by the leader's term):
-- the actors of CMS rows that are gone (a storm of deletes), and the live actor a restart
-- replaces (in the transaction that names the new one). $1 = orchestration ids.
-- Pinned to duroxide-pg 0.1.38 (migrations/0018's delete_instances_atomic, force = true:
-- running ones too). A turn in flight for one of them fails its ack (its lock is gone) and
-- writes nothing; an activity in flight fails its ack (its work item is gone).
SELECT instances_deleted FROM __DUROXIDE__.delete_instances_atomic($1::text[], true)
