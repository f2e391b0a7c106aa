-- duroxide-pg's fetch walks the orchestrator queue by visibility; with the planner settings
-- of our Duroxide pool this index turns its scan-and-sort into an index walk, O(log N).
CREATE INDEX IF NOT EXISTS toygres_actors_orch_visible_id
    ON __DUROXIDE__.orchestrator_queue (visible_at, id)
