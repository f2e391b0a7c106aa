//! What must hold after every fault scenario, read from the database alone (the writer
//! columns of the health history, the restart requests, the decisions, the store).

use std::time::Duration;

use super::TestDb;

/// Check every invariant; panic naming the first that fails.
///
/// - **one writer at a time**: two consecutive checks of one instance by different writers
///   (replica and epoch) are at least `min_handover` apart, unless a new incarnation of its
///   actor was started between them (its probe lease goes to whoever started it, at once): a
///   hand-over of one incarnation waits for the old holder's lease, so two writers close
///   together both believed they held it;
/// - **nobody left unchecked**: between consecutive checks of an instance, and since its last
///   one, at most `handoff_bound` went by (by the database's clock), but for the instances
///   named in `excused` (a row the scenario itself held: its checks wait for it);
/// - **restart requests**: none left pending, and no instance restarted more often than it
///   had requests handled;
/// - **no actor without its decision**: every actor in the store was started by a decision
///   that names it.
pub async fn check(db: &TestDb, min_handover: Duration, handoff_bound: Duration, excused: &[&str]) {
    let close_writers: Vec<(String, String, String, f64)> = sqlx::query_as(&format!(
        "SELECT i.k8s_name, h.prev_replica || '/' || h.prev_epoch, h.replica || '/' || h.replica_epoch,
                extract(epoch FROM h.checked_at - h.prev_at)::float8
           FROM (SELECT instance_id, replica, replica_epoch, checked_at,
                        lag(replica) OVER w AS prev_replica,
                        lag(replica_epoch) OVER w AS prev_epoch,
                        lag(checked_at) OVER w AS prev_at
                   FROM toygres_cms.instance_health_checks
                 WINDOW w AS (PARTITION BY instance_id ORDER BY checked_at)) h
           JOIN toygres_cms.instances i ON i.id = h.instance_id
          WHERE h.prev_at IS NOT NULL
            AND (h.replica, h.replica_epoch) IS DISTINCT FROM (h.prev_replica, h.prev_epoch)
            AND h.checked_at - h.prev_at < make_interval(secs => {secs})
            AND NOT EXISTS (
                SELECT 1 FROM toygres_actors.decisions d
                 WHERE d.instance_id = h.instance_id AND d.new_actor_id IS NOT NULL
                   AND d.error IS NULL AND d.action IN ('start', 'restart', 'adopt')
                   AND d.decided_at BETWEEN h.prev_at - make_interval(secs => {secs}) AND h.checked_at)",
        secs = min_handover.as_secs_f64()
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        close_writers.is_empty(),
        "two writers checked one incarnation less than {min_handover:?} apart (name, writer, next writer, seconds): {close_writers:?}"
    );

    let unchecked: Vec<(String, f64)> = sqlx::query_as(&format!(
        "WITH c AS (
             SELECT h.instance_id, h.checked_at,
                    lead(h.checked_at, 1, now()) OVER (PARTITION BY h.instance_id ORDER BY h.checked_at)
                      - h.checked_at AS gap
               FROM toygres_cms.instance_health_checks h)
         SELECT i.k8s_name, extract(epoch FROM max(c.gap))::float8
           FROM c JOIN toygres_cms.instances i ON i.id = c.instance_id
          WHERE i.state IN ('running', 'creating')
          GROUP BY i.k8s_name
         HAVING max(c.gap) > make_interval(secs => {})",
        handoff_bound.as_secs_f64()
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let unchecked: Vec<_> = unchecked
        .into_iter()
        .filter(|(name, _)| !excused.contains(&name.as_str()))
        .collect();
    assert!(
        unchecked.is_empty(),
        "instances went unchecked longer than the handoff bound {handoff_bound:?} (name, seconds): {unchecked:?}"
    );

    let pending = db.pending_restart_requests().await;
    assert_eq!(pending, 0, "a restart request was never handled");
    let restarted_twice: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT d.k8s_name, count(DISTINCT d.id), (SELECT count(*) FROM toygres_cms.actor_restart_requests r
                                          WHERE r.instance_id = d.instance_id)
           FROM toygres_actors.decisions d
          WHERE d.action = 'restart' AND d.error IS NULL
          GROUP BY d.k8s_name, d.instance_id
         HAVING count(DISTINCT d.id) > (SELECT count(*) FROM toygres_cms.actor_restart_requests r
                                         WHERE r.instance_id = d.instance_id)",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        restarted_twice.is_empty(),
        "restarted more often than asked (name, restarts, requests): {restarted_twice:?}"
    );

    let undecided: Vec<String> = sqlx::query_scalar(
        "SELECT i.instance_id FROM toygres_actors_duroxide.instances i
          WHERE i.instance_id LIKE 'actor-%'
            AND NOT EXISTS (SELECT 1 FROM toygres_actors.decisions d
                             WHERE d.new_actor_id = i.instance_id AND d.error IS NULL)",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        undecided.is_empty(),
        "actors in the store without the decision that started them: {undecided:?}"
    );
}
