//! The store wrapper (`src/store.rs`) on a real duroxide-pg: fetches wait for a wake-up
//! instead of polling, a lost wake-up costs at most the bound, other processes' enqueues
//! wake us through LISTEN, durable timers fire on time with no poll, and an idle runtime
//! fetches about once per bound per queue. Duroxide's own provider validation tests that
//! apply to a wrapper run against it too (queue semantics, locking, lock expiry,
//! atomicity, multi-execution, cancellation, long polling).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use duroxide::providers::Provider;
use duroxide::runtime::Runtime;
use duroxide::runtime::registry::ActivityRegistry;
use duroxide::{
    ActivityContext, Client, OrchestrationContext, OrchestrationRegistry, RuntimeOptions,
};
use support::TestDb;
use tokio_util::sync::CancellationToken;
use toygres_actors::store::{self, Store};

const SCHEMA: &str = "toygres_actors_duroxide";

async fn open(db: &TestDb, max_wait: Option<Duration>) -> Arc<Store> {
    let store = toygres_actors::duro::open_unguarded_store(&db.url, SCHEMA, false, &db.pool)
        .await
        .expect("open store");
    match max_wait {
        None => store,
        Some(w) => Arc::new(Store::with_max_wait(store.inner().clone(), SCHEMA, w)),
    }
}

/// A runtime with one orchestration: `Echo` runs activity `Twice` (and, with a `wait_ms`
/// input above zero, a durable timer first) and returns its output.
async fn runtime(store: Arc<Store>, slots: usize, poll: Duration) -> Arc<Runtime> {
    let activities = ActivityRegistry::builder()
        .register("Twice", |_ctx: ActivityContext, input: String| async move {
            Ok(format!("{input}{input}"))
        })
        .build();
    let orchestrations = OrchestrationRegistry::builder()
        .register(
            "Echo",
            |ctx: OrchestrationContext, input: String| async move {
                let wait_ms: u64 = input.parse().unwrap_or(0);
                if wait_ms > 0 {
                    ctx.schedule_timer(Duration::from_millis(wait_ms)).await;
                }
                ctx.schedule_activity("Twice", input).await
            },
        )
        .build();
    let options = RuntimeOptions {
        orchestration_concurrency: slots,
        worker_concurrency: slots,
        dispatcher_min_poll_interval: poll,
        ..RuntimeOptions::default()
    };
    Runtime::start_with_options(store, activities, orchestrations, options).await
}

/// Start `Echo(input)` through `client` and wait until it completed; how long it took.
async fn run_echo(client: &Client, id: &str, input: &str, within: Duration) -> Duration {
    let t = Instant::now();
    client
        .start_orchestration(id, "Echo", input)
        .await
        .expect("start");
    let status = client
        .wait_for_orchestration(id, within)
        .await
        .unwrap_or_else(|e| panic!("{id} did not complete within {within:?}: {e}"));
    assert!(
        matches!(status, duroxide::OrchestrationStatus::Completed { ref output, .. } if *output == format!("{input}{input}")),
        "{id}: {status:?}"
    );
    t.elapsed()
}

/// With wake-ups, one orchestration turn → activity → turn takes milliseconds although
/// the dispatchers never poll (a 1-minute poll interval, a 1-minute bound): every hop is a
/// wake-up. With this process's own wake-ups dropped (and no LISTEN), each hop waits for
/// the bound — at its production value (5 s): measured here, at most the bound per hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wakeups_make_turns_immediate_and_a_lost_one_costs_at_most_the_bound() {
    let db = TestDb::new().await;
    let store = open(&db, Some(Duration::from_secs(60))).await;
    let rt = runtime(store.clone(), 2, Duration::from_secs(60)).await;
    let client = Client::new(store.clone());
    // Warm up (the dispatchers' first fetches), then measure.
    run_echo(&client, "warm", "a", Duration::from_secs(10)).await;
    let mut took = Vec::new();
    for i in 0..5 {
        took.push(run_echo(&client, &format!("fast-{i}"), "b", Duration::from_secs(10)).await);
    }
    took.sort();
    eprintln!("start → completed with wake-ups: {took:?}");
    assert!(
        took[2] < Duration::from_millis(500),
        "a start must not wait for a poll: {took:?}"
    );
    rt.shutdown(None).await;

    // The production bound, wake-ups lost: three hops (start, activity, completion).
    let bound = toygres_actors::config::STORE_MAX_WAIT;
    let store = Arc::new(Store::new(store.inner().clone(), SCHEMA));
    let rt = runtime(store.clone(), 2, Duration::from_secs(60)).await;
    let client = Client::new(store.clone());
    run_echo(&client, "warm-2", "a", Duration::from_secs(10)).await;
    store.drop_local_wakeups(true);
    let stalled = run_echo(&client, "lost", "c", Duration::from_secs(60)).await;
    eprintln!("start → completed with every local wake-up lost (bound {bound:?}): {stalled:?}");
    assert!(
        stalled <= 3 * bound + Duration::from_secs(1),
        "a lost wake-up must cost at most the bound per hop: {stalled:?}"
    );
    assert!(
        stalled >= Duration::from_millis(500),
        "the wake-ups were not dropped (the test measures nothing): {stalled:?}"
    );
    rt.shutdown(None).await;
}

/// Another process (here: a plain duroxide-pg client with a pool of its own, as the CLI or
/// another replica) enqueues; the queue trigger's NOTIFY wakes our waiting fetch long
/// before the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_process_enqueue_wakes_the_waiting_fetch_through_listen() {
    let db = TestDb::new().await;
    let store = open(&db, Some(Duration::from_secs(60))).await;
    let stop = CancellationToken::new();
    let listen = tokio::spawn(store::listen(store.clone(), db.pool.clone(), stop.clone()));
    let rt = runtime(store.clone(), 2, Duration::from_secs(60)).await;
    let other = duroxide_pg::PostgresProvider::new_with_schema(&db.url, Some(SCHEMA))
        .await
        .expect("another provider");
    let other = Client::new(Arc::new(other) as Arc<dyn Provider>);
    // The listener is up once a wake-up by notification has been seen: poll the first run.
    run_echo(&other, "warm", "a", Duration::from_secs(70)).await;
    let mut took = Vec::new();
    for i in 0..5 {
        took.push(run_echo(&other, &format!("remote-{i}"), "d", Duration::from_secs(30)).await);
    }
    took.sort();
    eprintln!("start by another process → completed: {took:?}");
    assert!(
        took[4] < Duration::from_secs(2),
        "the bound is 60 s: only the notification can have woken the fetch: {took:?}"
    );
    stop.cancel();
    let _ = listen.await;
    rt.shutdown(None).await;
}

/// A durable timer fires on time although nothing polls (the due time of a timer enqueued
/// here is a wake-up of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_durable_timer_fires_on_time_without_polling() {
    let db = TestDb::new().await;
    let store = open(&db, Some(Duration::from_secs(60))).await;
    let rt = runtime(store.clone(), 2, Duration::from_secs(60)).await;
    let client = Client::new(store.clone());
    let took = run_echo(&client, "timer", "1500", Duration::from_secs(20)).await;
    eprintln!("1.5 s timer → completed after {took:?}");
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(took < Duration::from_millis(3000), "{took:?}");
    rt.shutdown(None).await;
}

/// Idle, a runtime with 4 + 4 dispatcher slots polling every 10 ms (without the wrapper:
/// ~800 fetches a second) fetches about once per bound per queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_runtime_fetches_about_once_per_bound_per_queue() {
    let db = TestDb::new().await;
    let bound = Duration::from_secs(2);
    let store = open(&db, Some(bound)).await;
    let rt = runtime(store.clone(), 4, Duration::from_millis(10)).await;
    let client = Client::new(store.clone());
    run_echo(&client, "warm", "a", Duration::from_secs(10)).await;
    let before = store.fetch_count();
    let window = Duration::from_secs(10);
    let t = Instant::now();
    support::wait_until(
        "the idle window",
        window + Duration::from_secs(5),
        || async { (t.elapsed() >= window).then_some(()) },
    )
    .await;
    let fetched = store.fetch_count() - before;
    let per_bound = fetched as f64 / (t.elapsed().as_secs_f64() / bound.as_secs_f64());
    eprintln!(
        "idle: {fetched} fetches in {:?} ({per_bound:.1} per bound, 2 queues)",
        t.elapsed()
    );
    assert!(fetched >= 2, "the bound must still fetch: {fetched}");
    assert!(
        per_bound <= 2.0 * 2.0,
        "idle fetches: {fetched} in {:?} ({per_bound:.1} per bound)",
        t.elapsed()
    );
    // And work still runs at once.
    let took = run_echo(&client, "after-idle", "e", Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    rt.shutdown(None).await;
}

/// A turn costs one fetch in the steady state: the one that finds it. A wake-up announces
/// how many items it made visible, and the lane rests once they are fetched (no empty
/// fetch after each item); the slot back from its own turn does not fetch again when
/// nothing woke the lane since; an ack wakes the lane only when it made work visible or a
/// message came for the instance meanwhile; a due time's follow-ups come only when its
/// fetch found nothing; the queue trigger's echo of this process's own inserts (LISTEN is
/// on) is ignored. (Before all this: 4.5 fetches a turn here; with all but the credit: 2.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_turn_costs_one_fetch() {
    let db = TestDb::new().await;
    let store = open(&db, None).await;
    let stop = CancellationToken::new();
    let listen = tokio::spawn(store::listen(store.clone(), db.pool.clone(), stop.clone()));
    let rt = runtime(store.clone(), 4, Duration::from_secs(60)).await;
    let client = Client::new(store.clone());
    run_echo(&client, "warm", "a", Duration::from_secs(10)).await;
    let before = store.fetch_count();
    let t = Instant::now();
    let runs = 10;
    for i in 0..runs {
        // Half of them with a durable timer first (a due-time fetch, as a lease renewal).
        let input = if i % 2 == 0 { "b" } else { "300" };
        run_echo(
            &client,
            &format!("steady-{i}"),
            input,
            Duration::from_secs(10),
        )
        .await;
    }
    let fetched = store.fetch_count() - before;
    // Echo: 2 turns and 1 activity; with the timer, 3 turns and 1 activity.
    let turns = runs / 2 * 3 + runs / 2 * 4;
    // Fetches the bound forced (5 s per queue) are not the turns' doing.
    let bound = 2 * (t.elapsed().as_secs() / toygres_actors::config::STORE_MAX_WAIT.as_secs() + 1);
    eprintln!(
        "{runs} orchestrations, {turns} turns: {fetched} fetches in {:?} (bound allows {bound})",
        t.elapsed()
    );
    assert!(
        fetched <= turns as u64 + turns as u64 / 5 + bound,
        "{fetched} fetches for {turns} turns"
    );
    stop.cancel();
    let _ = listen.await;
    rt.shutdown(None).await;
}

/// A burst of 200 orchestrations through 4 + 4 slots: all complete (single-flight fetches
/// do not starve the slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_completes_through_single_flight_fetches() {
    let db = TestDb::new().await;
    let store = open(&db, None).await;
    let rt = runtime(store.clone(), 4, Duration::from_millis(100)).await;
    let client = Client::new(store.clone());
    let t = Instant::now();
    for i in 0..200 {
        client
            .start_orchestration(&format!("burst-{i}"), "Echo", "f")
            .await
            .expect("start");
    }
    for i in 0..200 {
        client
            .wait_for_orchestration(&format!("burst-{i}"), Duration::from_secs(120))
            .await
            .expect("completes");
    }
    eprintln!(
        "200 orchestrations (2 turns + 1 activity each) in {:?}",
        t.elapsed()
    );
    rt.shutdown(None).await;
}
