//! Redis only: the event bus delivers each event once to every process.

use super::*;

/// A stand-in for a WebSocket session: forwards what the hub delivers to a channel.
struct FakeSession(tokio::sync::mpsc::UnboundedSender<Deliver>);

impl Actor for FakeSession {
    type Context = Context<Self>;
}

impl Handler<Deliver> for FakeSession {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _ctx: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

/// A registry on the test's arbiter.
fn registry() -> SessionRegistry {
    SessionRegistry::start(
        &actix::Arbiter::current(),
        SessionCaps {
            per_user: 8,
            total: 100,
        },
    )
}

/// A session of `user` in `registry`: its permit (keep it) and what it receives.
async fn fake_session(
    registry: &SessionRegistry,
    user: &str,
) -> (Permit, tokio::sync::mpsc::UnboundedReceiver<Deliver>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let permit = registry.admit(user).await.expect("admitted");
    registry.attach(&permit, FakeSession(tx).start().recipient());
    (permit, rx)
}

async fn next_frame(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Deliver>) -> String {
    match tokio::time::timeout(DEADLINE, rx.recv()).await {
        Ok(Some(Deliver::Event { body, .. })) => body.to_string(),
        Ok(Some(other)) => panic!("unexpected {other:?}"),
        Ok(None) => panic!("the session channel closed"),
        Err(_) => panic!("no frame within {DEADLINE:?}"),
    }
}

fn event(user: &str, n: u128, version: i64) -> JobEvent {
    JobEvent {
        user_id: user.to_owned(),
        message_id: id(n),
        version: Some(version),
        kind: JobEventKind::Processing { progress: 0 },
    }
}

#[actix_rt::test]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_bus_delivers_each_event_once_to_every_process() {
    let url = redis_url();
    let prefix = fresh_prefix();
    let (hub_a, hub_b) = (registry(), registry());
    let bus_a = RedisBus::connect(&url, &prefix, hub_a.clone())
        .await
        .expect("bus a");
    let bus_b = RedisBus::connect(&url, &prefix, hub_b.clone())
        .await
        .expect("bus b");
    let (_a, mut on_a) = fake_session(&hub_a, "alice").await;
    let (_b, mut on_b) = fake_session(&hub_b, "alice").await;
    let (_c, mut bob_on_b) = fake_session(&hub_b, "bob").await;

    let first = event("alice", 1, 1);
    bus_a.publish(first.clone()).await;
    // The second event proves the first did not arrive twice: it is the very next frame.
    let second = event("alice", 1, 2);
    bus_b.publish(second.clone()).await;
    let bobs = event("bob", 2, 1);
    bus_a.publish(bobs.clone()).await;
    for session in [&mut on_a, &mut on_b] {
        assert_eq!(next_frame(session).await, first.frame_body());
        assert_eq!(next_frame(session).await, second.frame_body());
    }
    assert_eq!(
        next_frame(&mut bob_on_b).await,
        bobs.frame_body(),
        "bob's own event"
    );
    // Alice's sessions never saw bob's event: their next frame is the next alice event.
    let third = event("alice", 3, 1);
    bus_b.publish(third.clone()).await;
    assert_eq!(next_frame(&mut on_a).await, third.frame_body());
    assert_eq!(next_frame(&mut on_b).await, third.frame_body());

    bus_a.close().await;
    bus_b.close().await;
}

#[actix_rt::test]
#[ignore = "needs Redis: set TEST_REDIS_URL=redis://127.0.0.1:6379"]
async fn redis_bus_skips_malformed_messages() {
    let url = redis_url();
    let prefix = fresh_prefix();
    let hub = registry();
    let bus = RedisBus::connect(&url, &prefix, hub.clone())
        .await
        .expect("bus");
    let (_permit, mut session) = fake_session(&hub, "alice").await;
    let admin = plain_client(&url).await;
    let channel = format!("{{{prefix}}}:events");
    for garbage in ["not json", "{\"user_id\":\"alice\"}", "[]"] {
        let _: i64 = admin
            .publish(channel.as_str(), garbage)
            .await
            .expect("publish");
    }
    let valid = event("alice", 5, 1);
    bus.publish(valid.clone()).await;
    assert_eq!(next_frame(&mut session).await, valid.frame_body());
    let _ = admin.quit().await;
    bus.close().await;
    assert!(RedisBus::connect(&url, "bad}", hub).await.is_err());
}
