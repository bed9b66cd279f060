//! Redis only: a lost state and its rebuild, the feed after a dropped subscriber, malformed
//! feed messages, and calls while Redis is away.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_enqueue_on_an_uninitialised_prefix_needs_rebuild() {
    redis_only(redis_enqueue_on_an_uninitialised_prefix_needs_rebuild_body).await;
}

async fn redis_enqueue_on_an_uninitialised_prefix_needs_rebuild_body(url: String, prefix: String) {
    let queue = redis_queue(&url, &prefix).await;
    assert_eq!(queue.kind(), "redis");
    assert_eq!(
        queue.enqueue(id(1), "una", None, NO_CAP).await.shown(),
        Err(QueueError::NeedsRebuild.to_string())
    );
    assert_eq!(queue.depth().await.shown(), Ok(0), "nothing was queued");
    assert_eq!(
        queue.pending_of("una").await.shown(),
        Ok(Vec::new()),
        "nothing was counted"
    );
    queue
        .rebuild(Vec::new(), Vec::new(), 0)
        .await
        .expect("rebuild");
    let enqueued = queue
        .enqueue(id(1), "una", None, NO_CAP)
        .await
        .expect("enqueue");
    assert_eq!((enqueued.ticket, enqueued.position), (1, 1));
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_lost_state_is_rebuilt_by_two_processes_without_duplicates() {
    redis_only(redis_lost_state_is_rebuilt_by_two_processes_without_duplicates_body).await;
}

async fn redis_lost_state_is_rebuilt_by_two_processes_without_duplicates_body(
    url: String,
    prefix: String,
) {
    let one = redis_queue(&url, &prefix).await;
    let two = redis_queue(&url, &prefix).await;
    one.rebuild(Vec::new(), Vec::new(), 0)
        .await
        .expect("initialise");
    for n in 1..=6u128 {
        let store = if n % 2 == 0 { &one } else { &two };
        store
            .enqueue(id(n), &format!("u{}", n % 3), None, NO_CAP)
            .await
            .expect("enqueue");
    }
    one.pop(&Offer::default())
        .await
        .expect("pop")
        .expect("job 1 is processing");
    // What the database holds: jobs 2..=6 queued, 1..=6 pending, max ticket 6.
    let recorded = one.snapshot().await.expect("snapshot");
    let pending: Vec<(String, Uuid)> = (1..=6u128)
        .map(|n| (format!("u{}", n % 3), id(n)))
        .collect();

    delete_redis_prefix(&url, &prefix).await; // what a Redis restart does
    assert_eq!(
        two.enqueue(id(7), "u0", None, NO_CAP).await.shown(),
        Err(QueueError::NeedsRebuild.to_string())
    );
    assert_eq!(one.depth().await.shown(), Ok(0));

    let (a, b) = tokio::join!(
        one.rebuild(recorded.clone(), pending.clone(), 6),
        two.rebuild(recorded.clone(), pending.clone(), 6),
    );
    let (a, b) = (a.expect("rebuild one"), b.expect("rebuild two"));
    assert_eq!(
        a.added + b.added,
        recorded.len(),
        "each job back exactly once"
    );
    assert_eq!(
        one.snapshot().await.shown().as_ref(),
        Ok(&recorded),
        "order restored"
    );
    let next = two
        .enqueue(id(7), "u1", None, NO_CAP)
        .await
        .expect("enqueue after rebuild");
    assert_eq!((next.ticket, next.position), (7, 6));
    let counted: BTreeSet<Uuid> = one
        .pending_of("u1")
        .await
        .expect("pending")
        .into_iter()
        .collect();
    assert_eq!(counted, BTreeSet::from([id(1), id(4), id(7)]));
    one.close().await;
    two.close().await;
}

/// The `id` of the connection named `name` in `CLIENT LIST`.
async fn connection_id(client: &fred::prelude::Client, name: &str) -> Option<String> {
    let list: String = client
        .custom(
            CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
            vec!["LIST"],
        )
        .await
        .expect("CLIENT LIST");
    list.lines().find_map(|line| {
        let fields: HashMap<&str, &str> = line
            .split(' ')
            .filter_map(|field| field.split_once('='))
            .collect();
        (fields.get("name") == Some(&name)).then(|| fields.get("id").map(|id| (*id).to_owned()))?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_feed_reports_a_gap_when_its_connection_drops_and_then_recovers() {
    redis_only(redis_feed_reports_a_gap_when_its_connection_drops_and_then_recovers_body).await;
}

async fn redis_feed_reports_a_gap_when_its_connection_drops_and_then_recovers_body(
    url: String,
    prefix: String,
) {
    let queue = initialised_redis_queue(&url, &prefix).await;
    let mut feed = queue.subscribe();
    queue
        .enqueue(id(1), "kim", None, NO_CAP)
        .await
        .expect("enqueue");
    assert!(matches!(
        next_item(&mut feed).await,
        FeedItem::Change(QueueChange::Added(_))
    ));

    let admin = plain_client(&url).await;
    let connection = connection_id(&admin, queue.feed_client_name())
        .await
        .expect("the feed subscriber is in CLIENT LIST under its name");
    let _: i64 = admin
        .custom(
            CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
            vec!["KILL", "ID", connection.as_str()],
        )
        .await
        .expect("CLIENT KILL");
    assert_eq!(
        next_item(&mut feed).await,
        FeedItem::Gap,
        "the drop is reported"
    );

    // Subscribed again before the gap was reported: the next change arrives.
    let enqueued = queue
        .enqueue(id(2), "kim", None, NO_CAP)
        .await
        .expect("enqueue");
    assert_eq!(
        next_change(&mut feed).await,
        FeedItem::Change(QueueChange::Added(job(2, "kim", enqueued.ticket)))
    );
    let _ = admin.quit().await;
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_malformed_feed_messages_become_gaps() {
    redis_only(redis_malformed_feed_messages_become_gaps_body).await;
}

async fn redis_malformed_feed_messages_become_gaps_body(url: String, prefix: String) {
    let queue = initialised_redis_queue(&url, &prefix).await;
    let mut feed = queue.subscribe();
    let admin = plain_client(&url).await;
    let channel = format!("{{{prefix}}}:feed");
    for garbage in ["garbage", "1 A not-a-uuid 1 u", "2 R"] {
        let _: i64 = admin
            .publish(channel.as_str(), garbage)
            .await
            .expect("publish");
        assert_eq!(next_item(&mut feed).await, FeedItem::Gap, "{garbage:?}");
    }
    let enqueued = queue
        .enqueue(id(1), "lee", None, NO_CAP)
        .await
        .expect("enqueue");
    assert_eq!(
        next_item(&mut feed).await,
        FeedItem::Change(QueueChange::Added(job(1, "lee", enqueued.ticket)))
    );
    // A skipped sequence number (a lost message) is a gap too.
    let _: i64 = admin
        .publish(channel.as_str(), format!("1000 R {}", id(1)))
        .await
        .expect("publish");
    assert_eq!(next_item(&mut feed).await, FeedItem::Gap);
    let _ = admin.quit().await;
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_calls_fail_promptly_while_redis_is_away_and_work_again_after() {
    redis_only(redis_calls_fail_promptly_while_redis_is_away_and_work_again_after_body).await;
}

async fn redis_calls_fail_promptly_while_redis_is_away_and_work_again_after_body(
    url: String,
    prefix: String,
) {
    let target = url
        .strip_prefix("redis://")
        .expect("a redis:// URL")
        .split('/')
        .next()
        .expect("authority")
        .rsplit('@')
        .next()
        .expect("host:port")
        .to_owned();
    let proxy = TcpProxy::start(target).await;
    let queue =
        initialised_redis_queue(&format!("redis://127.0.0.1:{}", proxy.port), &prefix).await;
    let mut feed = queue.subscribe();
    queue
        .enqueue(id(1), "ada", None, NO_CAP)
        .await
        .expect("enqueue");
    assert!(matches!(
        next_item(&mut feed).await,
        FeedItem::Change(QueueChange::Added(_))
    ));

    proxy.cut().await;
    let started = Instant::now();
    match queue.enqueue(id(2), "ada", None, NO_CAP).await {
        Err(QueueError::Redis(RedisError::Failed { .. })) => {}
        other => panic!("expected a Redis failure while Redis is away, got {other:?}"),
    }
    assert!(
        queue.ping().await.is_err(),
        "ping fails while Redis is away"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "calls fail promptly ({:?})",
        started.elapsed()
    );

    proxy.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the queue did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The subscriber reports its reconnect (after subscribing again) as a gap ...
    assert_eq!(next_item(&mut feed).await, FeedItem::Gap);
    let enqueued = queue
        .enqueue(id(2), "ada", None, NO_CAP)
        .await
        .expect("enqueue after recovery");
    assert_eq!(enqueued.position, 2, "the queue kept its state");
    // ... and carries changes again.
    assert_eq!(
        next_change(&mut feed).await,
        FeedItem::Change(QueueChange::Added(job(2, "ada", enqueued.ticket)))
    );
    queue.close().await;
    proxy.cut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_connect_fails_cleanly_without_redis() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = probe.local_addr().expect("address").port();
    drop(probe);
    let started = Instant::now();
    let result = RedisQueue::connect(&format!("redis://127.0.0.1:{port}"), &fresh_prefix()).await;
    assert!(matches!(
        result,
        Err(QueueError::Redis(RedisError::Failed { .. }))
    ));
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(matches!(
        RedisQueue::connect(&redis_url(), "bad{prefix}").await,
        Err(QueueError::Redis(RedisError::Settings(_)))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_an_aborted_enqueue_is_undone_whether_it_landed_before_or_lands_after() {
    redis_only(redis_an_aborted_enqueue_is_undone_body).await;
}

async fn redis_an_aborted_enqueue_is_undone_body(url: String, prefix: String) {
    let queue = initialised_redis_queue(&url, &prefix).await;
    // Landed before the abort: it leaves the queue and the owner's cap.
    queue
        .enqueue(id(1), "ann", None, NO_CAP)
        .await
        .expect("enqueue");
    queue
        .enqueue(id(2), "ann", None, NO_CAP)
        .await
        .expect("enqueue");
    assert_eq!(queue.abort(id(1), "ann").await.shown(), Ok(true));
    assert_eq!(queue.position(id(2)).await.shown(), Ok(Some(1)));
    assert_eq!(queue.pending_of("ann").await.shown(), Ok(vec![id(2)]));
    assert_eq!(queue.aborted(id(1)).await.shown(), Ok(true));
    // Lands after the abort (its reply was lost in a slow Redis): refused, nothing counted.
    assert_eq!(queue.abort(id(3), "ann").await.shown(), Ok(false));
    assert_eq!(
        queue.enqueue(id(3), "ann", None, NO_CAP).await.shown(),
        Err(QueueError::Aborted { id: id(3) }.to_string())
    );
    assert_eq!(queue.depth().await.shown(), Ok(1));
    assert_eq!(queue.pending_of("ann").await.shown(), Ok(vec![id(2)]));
    assert_eq!(queue.aborted(id(2)).await.shown(), Ok(false));
    queue.close().await;
}
