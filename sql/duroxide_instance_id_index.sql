-- Index-friendly lookup of instances' actors by id prefix (sql/live_actors_of_instances.sql):
-- instance ids in the "C" collation, for range scans.
CREATE INDEX IF NOT EXISTS toygres_actors_instances_id_c
    ON __DUROXIDE__.instances ((instance_id COLLATE "C"))
