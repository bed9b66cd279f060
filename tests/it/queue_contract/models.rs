//! The contract for jobs that ask for a model: a pop takes only what the backend offers,
//! positions count only the jobs that share a backend, and the feed, the snapshot, a requeue,
//! a removal and a rebuild keep the model.

use super::*;

fn routing() -> Arc<Routing> {
    Arc::new(Routing::new([
        ("one".to_string(), vec!["a".to_string(), "b".to_string()]),
        ("two".to_string(), vec!["b".to_string(), "c".to_string()]),
    ]))
}

/// Queues, in this order: c, a, b, c, (none), a with a model name that has a space.
async fn queue_mixed(store: &Arc<dyn QueueStore>) -> Vec<u32> {
    let mut positions = Vec::new();
    for (n, model) in [Some("c"), Some("a"), Some("b"), Some("c"), None, Some("a")]
        .into_iter()
        .enumerate()
    {
        let enqueued = store
            .enqueue(id(n as u128 + 1), "mia", model, NO_CAP)
            .await
            .expect("enqueue");
        positions.push(enqueued.position);
    }
    positions
}

pub(crate) async fn pops_take_only_offered_models_and_positions_count_shared_backends(
    store: Arc<dyn QueueStore>,
) {
    store.set_routing(routing());
    let mut feed = store.subscribe();
    // a counts a, b and no-model jobs; c counts b, c and no-model jobs; b and none count all.
    assert_eq!(queue_mixed(&store).await, [1, 1, 3, 3, 5, 4]);
    let ids: Vec<Uuid> = (1..=6).map(id).collect();
    assert_eq!(
        store.positions(&ids).await.shown(),
        Ok(vec![Some(1), Some(1), Some(3), Some(3), Some(5), Some(4)])
    );
    let first = next_item(&mut feed).await;
    assert_eq!(
        first,
        FeedItem::Change(QueueChange::Added(QueuedJob {
            model: Some(Arc::from("c")),
            ..job(1, "mia", 1)
        })),
        "the feed carries the model"
    );
    let snapshot = store.snapshot().await.expect("snapshot");
    let models: Vec<Option<&str>> = snapshot.iter().map(|j| j.model.as_deref()).collect();
    assert_eq!(
        models,
        [Some("c"), Some("a"), Some("b"), Some("c"), None, Some("a")]
    );

    let routing = routing();
    let one = routing.offer("one", Some("a"));
    let two = routing.offer("two", Some("b"));
    let popped = store.pop(&one).await.expect("pop").expect("a job for one");
    assert_eq!((popped.id, popped.model.as_deref()), (id(2), Some("a")));
    assert_eq!(
        store.position(id(6)).await.shown(),
        Ok(Some(3)),
        "b and none ahead"
    );
    // Put back, it is where it was; then removed, it leaves its lane too.
    store.requeue(&popped).await.expect("requeue");
    assert_eq!(store.position(id(6)).await.shown(), Ok(Some(4)));
    assert_eq!(store.remove(id(2)).await.shown(), Ok(true));
    let popped = store.pop(&two).await.expect("pop").expect("a job for two");
    assert_eq!(popped.id, id(1), "two takes the c job at the head");
    let nothing_listed = Offer::default();
    let popped = store
        .pop(&nothing_listed)
        .await
        .expect("pop")
        .expect("none");
    assert_eq!(
        popped.id,
        id(5),
        "a backend that lists nothing takes only model-less jobs"
    );
    assert_eq!(store.pop(&nothing_listed).await.shown(), Ok(None));
    assert_eq!(
        store.pop(&one).await.expect("pop").map(|j| j.id),
        Some(id(3))
    );
    assert_eq!(
        store.pop(&one).await.expect("pop").map(|j| j.id),
        Some(id(6))
    );
    assert_eq!(store.pop(&one).await.shown(), Ok(None), "never a job for c");
    assert_eq!(store.position(id(4)).await.shown(), Ok(Some(1)));
    assert_eq!(
        store.pop(&two).await.expect("pop").map(|j| j.id),
        Some(id(4))
    );
    assert_eq!(store.depth().await.shown(), Ok(0));
}

pub(crate) async fn a_rebuild_keeps_each_jobs_model(store: Arc<dyn QueueStore>) {
    store.set_routing(routing());
    let jobs = vec![
        QueuedJob {
            model: Some(Arc::from("c")),
            ..job(1, "ned", 1)
        },
        QueuedJob {
            model: Some(Arc::from("a")),
            ..job(2, "ned", 2)
        },
    ];
    store.rebuild(jobs, Vec::new(), 2).await.expect("rebuild");
    let one = routing().offer("one", None);
    assert_eq!(store.position(id(2)).await.shown(), Ok(Some(1)));
    let popped = store.pop(&one).await.expect("pop").expect("the a job");
    assert_eq!((popped.id, popped.model.as_deref()), (id(2), Some("a")));
    assert_eq!(store.pop(&one).await.shown(), Ok(None));
}

pub(crate) async fn jobs_for_a_model_nobody_lists_count_in_no_position(store: Arc<dyn QueueStore>) {
    store.set_routing(routing());
    for (n, model) in [Some("a"), Some("a"), Some("c"), None, Some("c")]
        .into_iter()
        .enumerate()
    {
        store
            .enqueue(id(n as u128 + 1), "ola", model, NO_CAP)
            .await
            .expect("enqueue");
    }
    // a is removed from backend one: its jobs can take no backend.
    store.set_routing(Arc::new(Routing::new([
        ("one".to_string(), vec!["b".to_string()]),
        ("two".to_string(), vec!["b".to_string(), "c".to_string()]),
    ])));
    let ids: Vec<Uuid> = (1..=5).map(id).collect();
    assert_eq!(
        store.positions(&ids).await.shown(),
        Ok(vec![Some(1), Some(1), Some(1), Some(2), Some(3)]),
        "the jobs for a count for nobody"
    );
    let late = store
        .enqueue(id(6), "ola", Some("c"), NO_CAP)
        .await
        .expect("enqueue");
    assert_eq!(late.position, 4, "c, none, c ahead; not the two for a");
}
