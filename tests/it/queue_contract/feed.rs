//! The contract: the change feed, the mirror built from it, rebuilds and `last_moved`.

use super::*;

pub(crate) async fn feed_reports_every_change_in_order(store: Arc<dyn QueueStore>) {
    let mut feed = store.subscribe();
    let a = store.enqueue(id(1), "fay", None, NO_CAP).await.expect("a");
    let b = store.enqueue(id(2), "gus", None, NO_CAP).await.expect("b");
    let c = store.enqueue(id(3), "fay", None, NO_CAP).await.expect("c");
    let popped = store
        .pop(&Offer::default())
        .await
        .expect("pop")
        .expect("a job");
    assert!(store.remove(id(2)).await.expect("remove"));
    store.requeue(&popped).await.expect("requeue");
    assert!(
        !store.remove(id(50)).await.expect("remove absent"),
        "no change"
    );
    store
        .requeue(&popped)
        .await
        .expect("requeue again: no change");
    let d = store.enqueue(id(4), "hal", None, NO_CAP).await.expect("d");
    let expected = vec![
        FeedItem::Change(QueueChange::Added(job(1, "fay", a.ticket))),
        FeedItem::Change(QueueChange::Added(job(2, "gus", b.ticket))),
        FeedItem::Change(QueueChange::Added(job(3, "fay", c.ticket))),
        FeedItem::Change(QueueChange::Removed { id: id(1) }),
        FeedItem::Change(QueueChange::Removed { id: id(2) }),
        FeedItem::Change(QueueChange::Added(job(1, "fay", a.ticket))),
        // The last one right after the requeue: the no-op operations sent nothing.
        FeedItem::Change(QueueChange::Added(job(4, "hal", d.ticket))),
    ];
    assert_eq!(next_items(&mut feed, expected.len()).await, expected);
}

pub(crate) async fn mirror_built_from_the_feed_equals_the_snapshot(store: Arc<dyn QueueStore>) {
    let mut feed = store.subscribe();
    let mut mirror = QueueBook::new();
    mirror.reset(store.snapshot().await.expect("snapshot"));
    let workers: Vec<_> = (0..8u128)
        .map(|worker| {
            let store = store.clone();
            tokio::spawn(async move {
                let user = format!("w{worker}");
                let mut mine = Vec::new();
                for round in 0..25u128 {
                    let n = worker * 1_000 + round + 1;
                    store
                        .enqueue(id(n), &user, None, NO_CAP)
                        .await
                        .expect("enqueue");
                    mine.push(id(n));
                    // Every third round pops; every sixth puts the popped job back.
                    if round % 3 == 0
                        && let Some(job) = store.pop(&Offer::default()).await.expect("pop")
                        && round % 2 == 0
                    {
                        store.requeue(&job).await.expect("requeue");
                    }
                    if round % 5 == 4 {
                        let victim = mine[mine.len() / 2];
                        store.remove(victim).await.expect("remove");
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    // Once the sentinel's change arrives, every earlier change has arrived too.
    let sentinel = id(999_999);
    store
        .enqueue(sentinel, "sentinel", None, NO_CAP)
        .await
        .expect("sentinel");
    let started = Instant::now();
    loop {
        match next_item(&mut feed).await {
            FeedItem::Gap => panic!("the feed lost changes during the burst"),
            FeedItem::Change(change) => {
                let done = matches!(&change, QueueChange::Added(job) if job.id == sentinel);
                mirror.apply(change);
                if done {
                    break;
                }
            }
        }
        assert!(started.elapsed() < DEADLINE, "the feed is too slow");
    }
    let snapshot = store.snapshot().await.expect("snapshot");
    assert!(!snapshot.is_empty());
    assert_eq!(mirror.jobs().cloned().collect::<Vec<_>>(), snapshot);
    for (index, job) in snapshot.iter().enumerate() {
        assert_eq!(mirror.position(&job.id), Some(index as u32 + 1));
    }
}

pub(crate) async fn rebuild_puts_back_only_missing_jobs(store: Arc<dyn QueueStore>) {
    let mut feed = store.subscribe();
    let x1 = store
        .enqueue(id(1), "xena", None, NO_CAP)
        .await
        .expect("x1");
    let x2 = store
        .enqueue(id(2), "xena", None, NO_CAP)
        .await
        .expect("x2");
    assert_eq!(next_items(&mut feed, 2).await.len(), 2, "the two enqueues");
    let top = x2.ticket;
    // The database's view, in ticket order (as `rebuild_from_db` reads it): two jobs the
    // store lacks, two it has.
    let recorded = vec![
        job(1, "xena", x1.ticket),
        job(2, "xena", x2.ticket),
        job(6, "zoe", top + 3),
        job(7, "yann", top + 5),
    ];
    let rebuilt = store
        .rebuild(recorded.clone(), Vec::new(), top + 5)
        .await
        .expect("rebuild");
    assert_eq!((rebuilt.added, rebuilt.queued), (2, 4));
    let order = vec![id(1), id(2), id(6), id(7)];
    assert_eq!(ids(&store.snapshot().await.expect("snapshot")), order);
    assert_eq!(
        next_items(&mut feed, 2).await,
        vec![
            FeedItem::Change(QueueChange::Added(job(6, "zoe", top + 3))),
            FeedItem::Change(QueueChange::Added(job(7, "yann", top + 5))),
        ],
        "additions are published in ticket order"
    );

    let shuffled = vec![
        recorded[3].clone(),
        recorded[0].clone(),
        recorded[2].clone(),
        recorded[1].clone(),
    ];
    let again = store
        .rebuild(shuffled, Vec::new(), top + 5)
        .await
        .expect("rebuild again");
    assert_eq!((again.added, again.queued), (0, 4), "never twice");
    assert_eq!(ids(&store.snapshot().await.expect("snapshot")), order);

    let after = store
        .rebuild(Vec::new(), Vec::new(), 1_000)
        .await
        .expect("rebuild with a higher max ticket");
    assert_eq!(after.added, 0);
    let next = store
        .enqueue(id(8), "xena", None, NO_CAP)
        .await
        .expect("enqueue");
    assert!(next.ticket > 1_000, "new tickets come after max_ticket");
    assert_eq!(next.position, 5);

    // A queued ticket above max_ticket also counts.
    store
        .rebuild(vec![job(9, "yann", 5_000)], Vec::new(), 0)
        .await
        .expect("rebuild");
    let last = store
        .enqueue(id(10), "xena", None, NO_CAP)
        .await
        .expect("enqueue");
    assert!(last.ticket > 5_000);
    assert_eq!(last.position, 7);
    // A lower max_ticket never moves the counter back.
    store
        .rebuild(Vec::new(), Vec::new(), 3)
        .await
        .expect("rebuild");
    let later = store
        .enqueue(id(11), "xena", None, NO_CAP)
        .await
        .expect("enqueue");
    assert!(later.ticket > last.ticket);
}

pub(crate) async fn concurrent_rebuilds_add_each_job_once(store: Arc<dyn QueueStore>) {
    // Many jobs (more than one rebuild chunk) from two "processes" at once.
    let recorded: Vec<QueuedJob> = (1..=1_200u128)
        .map(|n| job(n, &format!("u{}", n % 7), n as i64 * 2))
        .collect();
    let (first, second) = tokio::join!(
        store.rebuild(recorded.clone(), Vec::new(), 2_400),
        store.rebuild(recorded.iter().rev().cloned().collect(), Vec::new(), 2_400),
    );
    let (first, second) = (first.expect("first"), second.expect("second"));
    assert_eq!(
        first.added + second.added,
        1_200,
        "each job added exactly once"
    );
    let snapshot = store.snapshot().await.expect("snapshot");
    assert_eq!(
        snapshot, recorded,
        "ticket order, each job once, owners kept"
    );
    assert_eq!(store.depth().await.shown(), Ok(1_200));
    assert_eq!(store.position(id(1_200)).await.shown(), Ok(Some(1_200)));
}

pub(crate) async fn rebuild_resets_pending_sets(store: Arc<dyn QueueStore>) {
    store
        .enqueue(id(1), "alice", None, NO_CAP)
        .await
        .expect("a1");
    store
        .enqueue(id(2), "alice", None, NO_CAP)
        .await
        .expect("a2");
    store.enqueue(id(3), "bob", None, NO_CAP).await.expect("b1");
    store
        .rebuild(
            Vec::new(),
            vec![
                ("alice".into(), id(1)),
                ("carol".into(), id(5)),
                ("alice".into(), id(1)),
            ],
            0,
        )
        .await
        .expect("rebuild");
    assert_eq!(store.pending_of("alice").await.shown(), Ok(vec![id(1)]));
    assert_eq!(store.pending_of("carol").await.shown(), Ok(vec![id(5)]));
    assert_eq!(
        store.pending_of("bob").await.shown(),
        Ok(Vec::new()),
        "users the database counts nothing for are cleared"
    );
    // The cap counts the rebuilt sets.
    store
        .enqueue(id(4), "alice", None, 2)
        .await
        .expect("one more fits");
    assert_eq!(
        store.enqueue(id(6), "alice", None, 2).await.shown(),
        Err(QueueError::TooManyPending { limit: 2 }.to_string())
    );
    store
        .enqueue(id(7), "bob", None, 1)
        .await
        .expect("bob's slot is free");
}

pub(crate) async fn last_moved_follows_pops_and_marks(store: Arc<dyn QueueStore>) {
    assert_eq!(store.last_moved().await.shown(), Ok(None));
    store
        .enqueue(id(1), "mo", None, NO_CAP)
        .await
        .expect("enqueue");
    let before = chrono::Utc::now() - chrono::Duration::milliseconds(1);
    store
        .pop(&Offer::default())
        .await
        .expect("pop")
        .expect("a job");
    let after = chrono::Utc::now() + chrono::Duration::milliseconds(1);
    let moved = store
        .last_moved()
        .await
        .expect("last_moved")
        .expect("set by the pop");
    assert!(
        before <= moved && moved <= after,
        "{before} <= {moved} <= {after}"
    );
    assert_eq!(store.pop(&Offer::default()).await.shown(), Ok(None));
    assert_eq!(
        store.last_moved().await.shown(),
        Ok(Some(moved)),
        "an empty pop moves nothing"
    );

    // Whole milliseconds, as Redis keeps them.
    let ms = |at: chrono::DateTime<chrono::Utc>| {
        chrono::DateTime::from_timestamp_millis(at.timestamp_millis()).expect("a valid time")
    };
    let later = ms(after + chrono::Duration::minutes(5));
    store.mark_moved(later).await.expect("mark");
    assert_eq!(store.last_moved().await.shown(), Ok(Some(later)));
    store
        .mark_moved(ms(before - chrono::Duration::minutes(5)))
        .await
        .expect("mark earlier");
    assert_eq!(
        store.last_moved().await.shown(),
        Ok(Some(later)),
        "the latest time stays"
    );
}
