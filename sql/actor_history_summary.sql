-- How much Duroxide keeps of actor $1: executions and history events.
SELECT (SELECT count(*) FROM __DUROXIDE__.executions WHERE instance_id = $1) AS executions,
       (SELECT count(*) FROM __DUROXIDE__.history WHERE instance_id = $1) AS events
