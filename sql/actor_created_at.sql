-- When Duroxide created the actor orchestration $1 (NULL when unknown).
SELECT created_at FROM __DUROXIDE__.instances WHERE instance_id = $1
