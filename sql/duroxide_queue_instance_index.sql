-- The same for queued starts not yet turned into instances.
CREATE INDEX IF NOT EXISTS toygres_actors_orch_queue_instance_c
    ON __DUROXIDE__.orchestrator_queue ((instance_id COLLATE "C"))
