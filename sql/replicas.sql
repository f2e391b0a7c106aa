-- Every replica the database knows, with its heartbeat age, the leases it holds and whether
-- it leads (and in which term). Live ones first.
SELECT r.name, r.epoch, r.version, r.started_at,
       extract(epoch FROM clock_timestamp() - r.heartbeat_at)::float8 AS heartbeat_age_seconds,
       (r.expires_at > clock_timestamp() AND NOT r.draining) AS live,
       r.draining,
       (SELECT count(*) FROM toygres_actors.probe_leases l
         WHERE l.holder = r.name AND l.holder_epoch = r.epoch) AS leases,
       COALESCE(ld.expires_at > clock_timestamp(), false) AS leader,
       ld.term
  FROM toygres_actors.replicas r
  LEFT JOIN toygres_actors.leader ld
    ON ld.holder = r.name AND ld.epoch = r.epoch
 ORDER BY (r.expires_at > clock_timestamp() AND NOT r.draining) DESC, r.name
