//! The contract: positions, order, removal, requeue and the per-user cap.

use super::*;

pub(crate) async fn empty_queue_has_nothing(store: Arc<dyn QueueStore>) {
    assert_eq!(store.pop(&Offer::default()).await.shown(), Ok(None));
    assert_eq!(store.depth().await.shown(), Ok(0));
    assert_eq!(store.snapshot().await.shown(), Ok(Vec::new()));
    assert_eq!(store.position(id(1)).await.shown(), Ok(None));
    assert_eq!(store.remove(id(1)).await.shown(), Ok(false));
    assert_eq!(store.pending_of("nobody").await.shown(), Ok(Vec::new()));
    assert_eq!(store.ping().await.shown(), Ok(()));
}

pub(crate) async fn positions_are_one_based_unique_and_gap_free(store: Arc<dyn QueueStore>) {
    let mut tickets = Vec::new();
    for n in 1..=10u32 {
        let user = format!("user {}", n % 3);
        let enqueued = store
            .enqueue(id(n.into()), &user, None, NO_CAP)
            .await
            .expect("enqueue");
        assert_eq!(enqueued.position, n, "the n-th job is at position n");
        tickets.push(enqueued.ticket);
    }
    assert!(
        tickets.windows(2).all(|pair| pair[0] < pair[1]),
        "tickets increase: {tickets:?}"
    );
    assert_eq!(store.depth().await.shown(), Ok(10));
    let snapshot = store.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.len(), 10);
    assert_eq!(
        snapshot.iter().map(|job| job.ticket).collect::<Vec<_>>(),
        tickets,
        "the snapshot is in ticket order"
    );
    for (index, job) in snapshot.iter().enumerate() {
        assert_eq!(job.id, id(index as u128 + 1));
        assert_eq!(&*job.user_id, format!("user {}", (index + 1) % 3));
        assert_eq!(
            store.position(job.id).await.shown(),
            Ok(Some(index as u32 + 1)),
            "position agrees with the snapshot's order"
        );
    }
    assert_eq!(store.position(id(99)).await.shown(), Ok(None));
}

pub(crate) async fn three_concurrent_enqueues_get_positions_one_two_three(
    store: Arc<dyn QueueStore>,
) {
    let (a, b, c) = tokio::join!(
        store.enqueue(id(1), "a", None, NO_CAP),
        store.enqueue(id(2), "b", None, NO_CAP),
        store.enqueue(id(3), "c", None, NO_CAP),
    );
    let results = [a.expect("a"), b.expect("b"), c.expect("c")];
    let positions: BTreeSet<u32> = results.iter().map(|r| r.position).collect();
    assert_eq!(positions, BTreeSet::from([1, 2, 3]));
    let tickets: BTreeSet<i64> = results.iter().map(|r| r.ticket).collect();
    assert_eq!(tickets.len(), 3, "distinct tickets");
    let mut by_ticket = results.to_vec();
    by_ticket.sort_by_key(|r| r.ticket);
    assert_eq!(
        by_ticket.iter().map(|r| r.position).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "the lower ticket is in front"
    );
}

pub(crate) async fn two_hundred_concurrent_enqueues_get_each_position_once(
    store: Arc<dyn QueueStore>,
) {
    let tasks: Vec<_> = (1..=200u128)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let user = format!("u{}", n % 17);
                (n, store.enqueue(id(n), &user, None, NO_CAP).await)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        let (n, result) = task.await.expect("task");
        results.push((n, result.expect("enqueue")));
    }
    let mut positions: Vec<u32> = results.iter().map(|(_, r)| r.position).collect();
    positions.sort_unstable();
    assert_eq!(positions, (1..=200).collect::<Vec<_>>());
    // With only enqueues, the job with the k-th ticket was at position k when it entered.
    results.sort_by_key(|(_, r)| r.ticket);
    for (k, (_, r)) in results.iter().enumerate() {
        assert_eq!(r.position, k as u32 + 1);
    }
    let snapshot = store.snapshot().await.expect("snapshot");
    assert_eq!(
        ids(&snapshot),
        results.iter().map(|(n, _)| id(*n)).collect::<Vec<_>>()
    );
}

pub(crate) async fn pop_hands_out_jobs_in_ticket_order(store: Arc<dyn QueueStore>) {
    let mut expected = Vec::new();
    for n in 1..=5u128 {
        let enqueued = store
            .enqueue(id(n), "pat", None, NO_CAP)
            .await
            .expect("enqueue");
        expected.push(job(n, "pat", enqueued.ticket));
    }
    for want in &expected {
        assert_eq!(
            store.pop(&Offer::default()).await.shown().as_ref(),
            Ok(&Some(want.clone()))
        );
    }
    assert_eq!(store.pop(&Offer::default()).await.shown(), Ok(None));
    assert_eq!(store.depth().await.shown(), Ok(0));
}

pub(crate) async fn concurrent_poppers_get_each_job_exactly_once(store: Arc<dyn QueueStore>) {
    let mut all = HashSet::new();
    for n in 1..=200u128 {
        store
            .enqueue(id(n), &format!("u{}", n % 5), None, NO_CAP)
            .await
            .expect("enqueue");
        all.insert(id(n));
    }
    let poppers: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut popped = Vec::new();
                while let Some(job) = store.pop(&Offer::default()).await.expect("pop") {
                    popped.push(job);
                }
                popped
            })
        })
        .collect();
    let mut seen = Vec::new();
    for popper in poppers {
        let popped = popper.await.expect("popper");
        assert!(
            popped
                .windows(2)
                .all(|pair| pair[0].ticket < pair[1].ticket),
            "each popper gets jobs in ticket order"
        );
        seen.extend(popped.into_iter().map(|job| job.id));
    }
    let unique: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(seen.len(), 200, "no job handed out twice");
    assert_eq!(unique, all, "no job missing");
    assert_eq!(store.depth().await.shown(), Ok(0));
}

pub(crate) async fn remove_shifts_everyone_behind(store: Arc<dyn QueueStore>) {
    for n in 1..=5u128 {
        store
            .enqueue(id(n), "rita", None, NO_CAP)
            .await
            .expect("enqueue");
    }
    assert_eq!(store.remove(id(2)).await.shown(), Ok(true));
    assert_eq!(store.position(id(1)).await.shown(), Ok(Some(1)));
    assert_eq!(store.position(id(2)).await.shown(), Ok(None));
    for n in 3..=5u128 {
        assert_eq!(
            store.position(id(n)).await.shown(),
            Ok(Some(n as u32 - 1)),
            "everyone behind moved up by one"
        );
    }
    assert_eq!(
        store.remove(id(2)).await.shown(),
        Ok(false),
        "removed already"
    );
    assert_eq!(
        store.remove(id(77)).await.shown(),
        Ok(false),
        "never queued"
    );
    assert_eq!(store.depth().await.shown(), Ok(4));
    assert_eq!(
        ids(&store.snapshot().await.expect("snapshot")),
        vec![id(1), id(3), id(4), id(5)]
    );
}

pub(crate) async fn positions_in_one_call_match_one_by_one(store: Arc<dyn QueueStore>) {
    assert_eq!(store.positions(&[]).await.shown(), Ok(Vec::new()));
    assert_eq!(
        store.positions(&[id(9)]).await.shown(),
        Ok(vec![None]),
        "one, not queued"
    );
    for n in 1..=4u128 {
        store
            .enqueue(id(n), "paula", None, NO_CAP)
            .await
            .expect("enqueue");
    }
    assert_eq!(
        store.positions(&[id(3)]).await.shown(),
        Ok(vec![Some(3)]),
        "one, queued"
    );
    store.remove(id(2)).await.expect("remove");
    assert_eq!(
        store
            .positions(&[id(4), id(2), id(1), id(99), id(3)])
            .await
            .shown(),
        Ok(vec![Some(3), None, Some(1), None, Some(2)])
    );
}

pub(crate) async fn requeue_restores_the_place_and_is_idempotent(store: Arc<dyn QueueStore>) {
    for n in 1..=3u128 {
        store
            .enqueue(id(n), "quinn", None, NO_CAP)
            .await
            .expect("enqueue");
    }
    let first = store
        .pop(&Offer::default())
        .await
        .expect("pop")
        .expect("a job");
    assert_eq!(first.id, id(1));
    assert_eq!(store.position(id(2)).await.shown(), Ok(Some(1)));
    store.requeue(&first).await.expect("requeue");
    assert_eq!(
        store.position(id(1)).await.shown(),
        Ok(Some(1)),
        "back in front"
    );
    assert_eq!(store.position(id(2)).await.shown(), Ok(Some(2)));
    assert_eq!(store.position(id(3)).await.shown(), Ok(Some(3)));
    let before = store.snapshot().await.expect("snapshot");
    store.requeue(&first).await.expect("requeue again");
    assert_eq!(
        store.snapshot().await.shown().as_ref(),
        Ok(&before),
        "nothing changed"
    );
    assert_eq!(store.depth().await.shown(), Ok(3));
    assert_eq!(
        store.pop(&Offer::default()).await.shown(),
        Ok(Some(first)),
        "it keeps its ticket and owner"
    );
}

pub(crate) async fn per_user_cap_is_enforced(store: Arc<dyn QueueStore>) {
    for n in 1..=3u128 {
        store
            .enqueue(id(n), "alice", None, 3)
            .await
            .expect("within the cap");
    }
    assert_eq!(
        store.enqueue(id(4), "alice", None, 3).await.shown(),
        Err(QueueError::TooManyPending { limit: 3 }.to_string())
    );
    assert_eq!(
        store.position(id(4)).await.shown(),
        Ok(None),
        "refused jobs are not queued"
    );
    store
        .enqueue(id(10), "bob", None, 3)
        .await
        .expect("other users are unaffected");
    // A popped job is processing: still pending, still counted.
    assert_eq!(
        store
            .pop(&Offer::default())
            .await
            .shown()
            .map(|job| job.map(|j| j.id)),
        Ok(Some(id(1)))
    );
    assert_eq!(
        store.enqueue(id(4), "alice", None, 3).await.shown(),
        Err(QueueError::TooManyPending { limit: 3 }.to_string())
    );
    store.release("alice", id(1)).await.expect("release");
    store
        .enqueue(id(4), "alice", None, 3)
        .await
        .expect("a freed slot fits one more");
    assert_eq!(
        store.enqueue(id(5), "alice", None, 3).await.shown(),
        Err(QueueError::TooManyPending { limit: 3 }.to_string())
    );
    assert_eq!(
        store.enqueue(id(6), "carol", None, 0).await.shown(),
        Err(QueueError::TooManyPending { limit: 0 }.to_string()),
        "a cap of zero refuses everything"
    );
}

pub(crate) async fn concurrent_enqueues_respect_the_cap_exactly(store: Arc<dyn QueueStore>) {
    let tasks: Vec<_> = (1..=20u128)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.enqueue(id(n), "greedy", None, 5).await })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => accepted += 1,
            Err(err) => assert!(
                matches!(err, QueueError::TooManyPending { limit: 5 }),
                "{err}"
            ),
        }
    }
    assert_eq!(accepted, 5, "exactly the cap");
    assert_eq!(store.depth().await.shown(), Ok(5));
    assert_eq!(
        store
            .pending_of("greedy")
            .await
            .shown()
            .map(|ids| ids.len()),
        Ok(5)
    );
}

pub(crate) async fn pending_of_lists_the_counted_ids(store: Arc<dyn QueueStore>) {
    for n in 1..=3u128 {
        store
            .enqueue(id(n), "carol", None, NO_CAP)
            .await
            .expect("enqueue");
    }
    store
        .enqueue(id(9), "dave", None, NO_CAP)
        .await
        .expect("enqueue");
    let pending: BTreeSet<Uuid> = store
        .pending_of("carol")
        .await
        .expect("pending")
        .into_iter()
        .collect();
    assert_eq!(pending, BTreeSet::from([id(1), id(2), id(3)]));
    store.release("carol", id(2)).await.expect("release");
    store
        .release("carol", id(42))
        .await
        .expect("an unknown id is harmless");
    store
        .release("nobody", id(1))
        .await
        .expect("an unknown user is harmless");
    let pending: BTreeSet<Uuid> = store
        .pending_of("carol")
        .await
        .expect("pending")
        .into_iter()
        .collect();
    assert_eq!(pending, BTreeSet::from([id(1), id(3)]));
    assert_eq!(store.pending_of("dave").await.shown(), Ok(vec![id(9)]));
    assert_eq!(
        store.depth().await.shown(),
        Ok(4),
        "release does not touch the queue"
    );
}
