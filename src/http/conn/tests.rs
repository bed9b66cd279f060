use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn limits(header_ms: u64, idle_ms: u64) -> ConnLimits {
    ConnLimits {
        header: Duration::from_millis(header_ms),
        idle: Duration::from_millis(idle_ms),
        write: Duration::from_secs(3600),
    }
}

async fn guarded(
    limits: ConnLimits,
) -> (
    GuardedIo<tokio::io::DuplexStream>,
    tokio::io::DuplexStream,
    Arc<ConnState>,
) {
    let (ours, theirs) = tokio::io::duplex(1024);
    let state = ConnState::new(limits);
    let permit = Arc::new(tokio::sync::Semaphore::new(1))
        .try_acquire_owned()
        .expect("permit");
    (
        GuardedIo::new(ours, state.clone(), (permit, None)),
        theirs,
        state,
    )
}

#[tokio::test(start_paused = true)]
async fn a_head_that_does_not_come_in_time_cuts_the_connection() {
    let (mut io, mut client, state) = guarded(limits(1000, 60_000)).await;
    client.write_all(b"GET / HT").await.unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(io.read(&mut buf).await.unwrap(), 8);
    let err = io.read(&mut buf).await.expect_err("cut");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(state.cut(), Some(Cut::HeaderTimeout));
}

#[tokio::test(start_paused = true)]
async fn a_trickling_head_is_cut_at_the_header_timeout_and_silence_at_the_idle_one() {
    let (mut io, mut client, state) = guarded(limits(3000, 1000)).await;
    let mut buf = [0u8; 64];
    for byte in b"GET / " {
        client.write_all(&[*byte]).await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        tokio::time::advance(Duration::from_millis(900)).await;
    }
    let err = io.read(&mut buf).await.expect_err("cut");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(
        state.cut(),
        Some(Cut::HeaderTimeout),
        "each byte came in time; the head did not"
    );
    let (mut io, _client, state) = guarded(limits(3000, 1000)).await;
    let started = tokio::time::Instant::now();
    io.read(&mut buf).await.expect_err("cut");
    assert_eq!(state.cut(), Some(Cut::IdleTimeout));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the idle limit, not the head's"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_being_served_and_a_websocket_are_not_cut() {
    let (mut io, mut client, state) = guarded(limits(1000, 2000)).await;
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(io.read(&mut buf).await.unwrap(), 18);
    let serving = state.serving();
    let read = tokio::time::timeout(Duration::from_secs(30), io.read(&mut buf)).await;
    assert!(read.is_err(), "no deadline while a request is served");
    drop(serving);
    // Kept alive with no traffic: the idle limit.
    let err = io.read(&mut buf).await.expect_err("cut");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(state.cut(), Some(Cut::IdleTimeout));

    let (mut io, mut client, state) = guarded(limits(1000, 2000)).await;
    client.write_all(b"GET /ws HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(io.read(&mut buf).await.unwrap(), 20);
    drop(state.serving());
    state.upgraded();
    let read = tokio::time::timeout(Duration::from_secs(30), io.read(&mut buf)).await;
    assert!(read.is_err(), "a WebSocket has no HTTP deadline");
    assert_eq!(state.cut(), None);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_does_not_read_is_cut_at_the_write_timeout() {
    let mut limits = limits(1000, 60_000);
    limits.write = Duration::from_secs(5);
    let (ours, theirs) = tokio::io::duplex(64);
    let state = ConnState::new(limits);
    let permit = Arc::new(tokio::sync::Semaphore::new(1))
        .try_acquire_owned()
        .expect("permit");
    let mut io = GuardedIo::new(ours, state.clone(), (permit, None));
    let _serving = state.serving();
    // The peer reads a little, slower than the deadline would allow if it counted from the
    // first write: progress restarts it.
    let reader = tokio::spawn(async move {
        let mut theirs = theirs;
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            let _ = theirs.read(&mut buf).await;
        }
        theirs
    });
    let started = tokio::time::Instant::now();
    let err = loop {
        if let Err(err) = io.write_all(&[7u8; 64]).await {
            break err;
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(state.cut(), Some(Cut::WriteTimeout));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(12) + Duration::from_secs(5),
        "cut after {waited:?}: reads by the peer restart the deadline"
    );
    drop(reader);
}

#[test]
fn an_address_gets_its_share_and_no_more() {
    let cap = AddressCap::new(2);
    let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
    let first = cap.admit(a).expect("first");
    let _second = cap.admit(a).expect("second");
    assert!(cap.admit(a).is_none(), "a third from the same address");
    assert!(cap.admit(b).is_some(), "another address is not affected");
    drop(first);
    assert!(
        cap.admit(a).is_some(),
        "a share comes back when its connection goes"
    );
}
