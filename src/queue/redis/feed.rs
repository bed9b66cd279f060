//! The queue's change feed: the subscriber task that turns the messages of `{p}:feed` into
//! [`FeedItem`]s, with a [`FeedItem::Gap`] wherever one may have been lost.

use crate::domain::queue_book::{QueueChange, QueuedJob};
use crate::queue::FeedItem;
use crate::redis_client::{Received, Subscription};
use std::sync::Arc;
use tokio::sync::broadcast;
use uuid::Uuid;

/// One parsed feed message: its sequence number and the change.
pub(super) fn parse_feed(text: &str) -> Option<(u64, QueueChange)> {
    let mut parts = text.splitn(6, ' ');
    let seq = parts.next()?.parse().ok()?;
    match parts.next()? {
        "A" => {
            let id = Uuid::parse_str(parts.next()?).ok()?;
            let ticket = parts.next()?.parse().ok()?;
            let model = match parts.next()? {
                "-" => None,
                hex => Some(Arc::from(from_hex(hex)?.as_str())),
            };
            let user = parts.next()?;
            Some((
                seq,
                QueueChange::Added(QueuedJob {
                    id,
                    user_id: Arc::from(user),
                    ticket,
                    model,
                }),
            ))
        }
        "R" => {
            let id = Uuid::parse_str(parts.next()?).ok()?;
            match parts.next() {
                None => Some((seq, QueueChange::Removed { id })),
                Some(_) => None,
            }
        }
        _ => None,
    }
}

/// The text a feed message carries as hex (a model name may contain spaces).
fn from_hex(hex: &str) -> Option<String> {
    String::from_utf8(hex::decode(hex).ok()?).ok()
}

/// Turns the feed channel's messages into [`FeedItem`]s until the subscriber closes.
///
/// A reconnect is reported as a gap only once the channel is subscribed again, so a mirror
/// that reloads on the gap cannot miss a change published after its reload.
pub(super) async fn run_feed(mut subscription: Subscription, feed: broadcast::Sender<FeedItem>) {
    // `None`: the next sequence number is accepted whatever it is (after a gap).
    let mut last_seq: Option<u64> = None;
    // No receiver is fine: a mirror loads a snapshot when it subscribes.
    let send = |item: FeedItem| {
        let _ = feed.send(item);
    };
    loop {
        match subscription.next().await {
            Received::Message(value) => {
                match value.as_str().and_then(|text| parse_feed(&text)) {
                    Some((seq, change)) => {
                        let in_order = last_seq.is_none_or(|last| seq == last.wrapping_add(1));
                        last_seq = Some(seq);
                        if in_order {
                            send(FeedItem::Change(change));
                        } else {
                            // The mirror reloads a snapshot, which includes this change.
                            tracing::debug!(seq, "queue feed skipped a sequence number");
                            send(FeedItem::Gap);
                        }
                    }
                    None => {
                        tracing::warn!(feed_message = ?value, "malformed queue feed message");
                        last_seq = None;
                        send(FeedItem::Gap);
                    }
                }
            }
            Received::Resubscribed => {
                tracing::info!("queue feed subscriber reconnected; mirrors reload");
                last_seq = None;
                send(FeedItem::Gap);
            }
            Received::Lagged(missed) => {
                tracing::warn!(missed, "queue feed subscriber lagged");
                last_seq = None;
                send(FeedItem::Gap);
            }
            Received::Closed => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_messages_parse_and_malformed_ones_do_not() {
        let id = Uuid::from_u128(7);
        assert_eq!(
            parse_feed(&format!("12 A {id} 34 - ali veli")),
            Some((
                12,
                QueueChange::Added(QueuedJob {
                    id,
                    user_id: Arc::from("ali veli"),
                    ticket: 34,
                    model: None,
                })
            ))
        );
        assert_eq!(
            parse_feed(&format!("12 A {id} 34 6d792061 u")),
            Some((
                12,
                QueueChange::Added(QueuedJob {
                    id,
                    user_id: Arc::from("u"),
                    ticket: 34,
                    model: Some(Arc::from("my a")),
                })
            ))
        );
        assert_eq!(
            parse_feed(&format!("13 R {id}")),
            Some((13, QueueChange::Removed { id }))
        );
        for bad in [
            "",
            "x A",
            "1 A not-a-uuid 3 u",
            &format!("1 A {id} x - u"),
            &format!("1 A {id} 3 -"),
            &format!("1 A {id} 3 6d7 u"),
            &format!("1 A {id} 3 zz u"),
            &format!("1 R {id} extra"),
            &format!("1 Q {id}"),
            "1 R",
        ] {
            assert_eq!(parse_feed(bad), None, "{bad:?}");
        }
    }
}
