//! Every transition, refusal and limit of `apply`.

use super::*;
use crate::domain::message::tests::queued_message;
use chrono::Duration;
use serde_json::json;

fn patch_of(patch: Value) -> Change {
    Change::ClientPatch {
        owner: "alice".into(),
        patch,
        client_ref: None,
    }
}

fn created() -> Option<ChatMessage> {
    let mut current = None;
    apply(
        &mut current,
        &Change::Create(Box::new(queued_message())),
        Utc::now(),
    )
    .unwrap();
    current
}

fn transition(current: &mut Option<ChatMessage>, t: Transition) -> Result<JobEventKind, Refusal> {
    apply(current, &Change::Transition(t), Utc::now())
}

fn complete() -> Transition {
    Transition::Complete {
        image_url: "/images/x.png".into(),
        placeholder: false,
        seed: Some(1234),
        model: Some("b".into()),
    }
}

#[test]
fn create_sets_version_one_and_queued() {
    let current = created().unwrap();
    assert_eq!((current.version, current.status), (1, JobStatus::Queued));
    assert_eq!(current.queue_position, Some(3));
}

#[test]
fn create_twice_is_refused() {
    let mut current = created();
    let again = apply(
        &mut current,
        &Change::Create(Box::new(queued_message())),
        Utc::now(),
    );
    assert_eq!(again, Err(Refusal::AlreadyExists));
}

#[test]
fn the_lifecycle_writes_every_field_and_counts_versions() {
    let mut current = created();
    transition(
        &mut current,
        Transition::Processing {
            backend: "b1".into(),
            may_decline: false,
        },
    )
    .unwrap();
    let message = current.as_ref().unwrap();
    assert_eq!(
        (message.status, message.progress, message.queue_position),
        (JobStatus::Processing, 0, None)
    );
    assert!(message.started_at.is_some());
    apply(
        &mut current,
        &Change::Progress {
            progress: 40,
            eta_s: Some(3),
        },
        Utc::now(),
    )
    .unwrap();
    apply(
        &mut current,
        &Change::Progress {
            progress: 20,
            eta_s: Some(3),
        },
        Utc::now(),
    )
    .unwrap();
    assert_eq!(
        current.as_ref().unwrap().progress,
        40,
        "progress never goes back"
    );
    let event = transition(&mut current, complete()).unwrap();
    let message = current.unwrap();
    assert_eq!(message.version, 5);
    assert_eq!(
        (message.status, message.progress),
        (JobStatus::Complete, 100)
    );
    assert_eq!(message.image_url.as_deref(), Some("/images/x.png"));
    assert!(message.finished_at.is_some());
    assert!(matches!(
        event,
        JobEventKind::Complete {
            placeholder: false,
            ..
        }
    ));
}

#[test]
fn a_terminal_message_refuses_every_transition_and_stays_unchanged() {
    for terminal in [
        complete(),
        Transition::Fail {
            error: JobFailure::Unknown.to_error(),
        },
        Transition::Cancel { client_ref: None },
    ] {
        let mut current = created();
        transition(
            &mut current,
            Transition::Processing {
                backend: "b".into(),
                may_decline: false,
            },
        )
        .unwrap();
        transition(&mut current, terminal.clone()).unwrap();
        let before = current.clone();
        for next in [
            complete(),
            Transition::Processing {
                backend: "b".into(),
                may_decline: false,
            },
            Transition::Cancel { client_ref: None },
            Transition::Fail {
                error: JobFailure::Timeout.to_error(),
            },
            Transition::MarkStuck {
                inactive_since: Utc::now() + Duration::hours(1),
            },
        ] {
            assert!(matches!(
                transition(&mut current, next),
                Err(Refusal::IllegalTransition { .. })
            ));
        }
        assert!(
            apply(
                &mut current,
                &Change::Progress {
                    progress: 50,
                    eta_s: None
                },
                Utc::now()
            )
            .is_err()
        );
        assert_eq!(current, before);
    }
}

#[test]
fn client_patches_merge_in_any_status_without_counting_as_activity() {
    let mut current = created();
    let activity = current.as_ref().unwrap().activity_at;
    let later = Utc::now() + Duration::seconds(5);
    apply(&mut current, &patch_of(json!({"a": {"b": 1}})), later).unwrap();
    transition(&mut current, Transition::Cancel { client_ref: None }).unwrap();
    apply(&mut current, &patch_of(json!({"a": {"c": 2}})), Utc::now()).unwrap();
    let message = current.unwrap();
    assert_eq!(message.data, json!({"a": {"b": 1, "c": 2}}));
    assert_eq!(message.status, JobStatus::Cancelled);
    assert!(message.activity_at >= activity);
}

#[test]
fn a_patch_does_not_move_activity() {
    let mut current = created();
    let activity = current.as_ref().unwrap().activity_at;
    apply(
        &mut current,
        &patch_of(json!({"a": 1})),
        Utc::now() + Duration::minutes(10),
    )
    .unwrap();
    assert_eq!(current.unwrap().activity_at, activity);
}

#[test]
fn mark_stuck_applies_only_to_jobs_still_inactive() {
    let mut current = created();
    let since = current.as_ref().unwrap().activity_at - Duration::seconds(1);
    assert_eq!(
        transition(
            &mut current,
            Transition::MarkStuck {
                inactive_since: since
            }
        ),
        Err(Refusal::NotStuck)
    );
    let since = current.as_ref().unwrap().activity_at;
    let event = transition(
        &mut current,
        Transition::MarkStuck {
            inactive_since: since,
        },
    )
    .unwrap();
    let message = current.unwrap();
    assert_eq!(message.status, JobStatus::Error);
    assert_eq!(
        message.error.as_ref().map(|e| e.code.as_str()),
        Some("stuck_job")
    );
    assert!(matches!(event, JobEventKind::Error { .. }));
}

#[test]
fn expire_applies_only_past_the_deadline() {
    let mut current = created();
    let created_at = current.as_ref().unwrap().created_at;
    let early = Transition::Expire {
        created_before: created_at - Duration::seconds(1),
    };
    assert_eq!(transition(&mut current, early), Err(Refusal::NotStuck));
    transition(
        &mut current,
        Transition::Expire {
            created_before: created_at,
        },
    )
    .unwrap();
    let message = current.unwrap();
    assert_eq!(message.error.map(|e| e.code), Some("timeout".to_owned()));
}

#[test]
fn another_users_patch_finds_no_message() {
    let mut current = created();
    let before = current.clone();
    let mallory = Change::ClientPatch {
        owner: "mallory".into(),
        patch: json!({"a": 1}),
        client_ref: None,
    };
    assert_eq!(
        apply(&mut current, &mallory, Utc::now()),
        Err(Refusal::NotFound)
    );
    assert_eq!(current, before);
}

#[test]
fn changes_to_a_missing_message_are_not_found() {
    let mut current = None;
    assert_eq!(transition(&mut current, complete()), Err(Refusal::NotFound));
    assert_eq!(
        apply(&mut current, &patch_of(json!({})), Utc::now()),
        Err(Refusal::NotFound)
    );
}

#[test]
fn processing_twice_is_refused() {
    let mut current = created();
    transition(
        &mut current,
        Transition::Processing {
            backend: "a".into(),
            may_decline: false,
        },
    )
    .unwrap();
    assert!(
        transition(
            &mut current,
            Transition::Processing {
                backend: "b".into(),
                may_decline: false,
            }
        )
        .is_err()
    );
    assert_eq!(current.unwrap().backend.as_deref(), Some("a"));
}

#[test]
fn a_bad_patch_changes_nothing() {
    let mut current = created();
    let before = current.clone();
    let refused = apply(&mut current, &patch_of(json!([1])), Utc::now());
    assert_eq!(refused, Err(Refusal::Patch(PatchError::NotAnObject)));
    assert_eq!(current, before);
}

#[test]
fn a_write_with_a_ref_is_applied_once_and_its_ref_is_echoed() {
    let mut current = created();
    let now = Utc::now();
    let patch = |n: i64| Change::ClientPatch {
        owner: "alice".into(),
        patch: json!({"n": n}),
        client_ref: Some("r1".into()),
    };
    assert_eq!(
        apply(&mut current, &patch(1), now),
        Ok(JobEventKind::Updated {
            data: json!({"n": 1}),
            client_ref: Some("r1".into())
        })
    );
    let version = current.as_ref().map(|m| m.version);
    assert_eq!(
        apply(&mut current, &patch(2), now),
        Err(Refusal::AlreadyApplied),
        "the same ref again (even with other data: a resend) is not applied"
    );
    assert_eq!(current.as_ref().map(|m| m.version), version);
    assert_eq!(
        current.as_ref().map(|m| m.data.clone()),
        Some(json!({"n": 1}))
    );
    // A cancel with a ref: once cancelled, the same ref is acknowledged, another conflicts.
    let cancel = |client_ref: &str| {
        Change::Transition(Transition::Cancel {
            client_ref: Some(client_ref.into()),
        })
    };
    assert!(matches!(
        apply(&mut current, &cancel("c1"), now),
        Ok(JobEventKind::Cancelled { client_ref: Some(ref r), .. }) if r == "c1"
    ));
    assert_eq!(
        apply(&mut current, &cancel("c1"), now),
        Err(Refusal::AlreadyApplied)
    );
    assert!(matches!(
        apply(&mut current, &cancel("c2"), now),
        Err(Refusal::IllegalTransition { .. })
    ));
}

fn start(current: &mut Option<ChatMessage>) -> i64 {
    transition(
        current,
        Transition::Processing {
            backend: "http://gpu1".into(),
            may_decline: false,
        },
    )
    .unwrap();
    current.as_ref().unwrap().runs
}

#[test]
fn a_job_handed_back_is_queued_again_and_only_by_its_current_run() {
    let mut current = created();
    let now = Utc::now();
    let run = start(&mut current);
    assert_eq!(run, 1, "the first run is 1");
    let other = Change::Transition(Transition::HandBack {
        run: run + 1,
        elsewhere: false,
    });
    assert_eq!(apply(&mut current, &other, now), Err(Refusal::RunEnded));
    let back = Change::Transition(Transition::HandBack {
        run,
        elsewhere: false,
    });
    assert_eq!(
        apply(&mut current, &back, now),
        Ok(JobEventKind::Queued {
            queue_position: None
        })
    );
    let message = current.as_ref().unwrap();
    assert_eq!(message.status, JobStatus::Queued);
    assert_eq!((message.backend.as_deref(), message.progress), (None, 0));
    assert_eq!(
        apply(&mut current, &back, now),
        Err(Refusal::RunEnded),
        "a second hand-back is refused"
    );
}

#[test]
fn a_write_of_a_run_that_lost_its_lease_is_refused_and_the_next_run_wins() {
    let mut current = created();
    let now = Utc::now();
    let first = start(&mut current);
    let back = Change::Transition(Transition::HandBack {
        run: first,
        elsewhere: false,
    });
    apply(&mut current, &back, now).unwrap();
    let second = start(&mut current);
    assert_eq!(second, first + 1);
    let of = |run, change| Change::OfRun {
        run,
        change: Box::new(change),
    };
    let complete = |url: &str| {
        Change::Transition(Transition::Complete {
            image_url: url.into(),
            placeholder: false,
            seed: None,
            model: None,
        })
    };
    let progress = Change::Progress {
        progress: 50,
        eta_s: None,
    };
    assert_eq!(
        apply(&mut current, &of(first, progress.clone()), now),
        Err(Refusal::RunEnded)
    );
    assert_eq!(
        apply(
            &mut current,
            &of(first, complete("/images/zombie.png")),
            now
        ),
        Err(Refusal::RunEnded),
        "the zombie's outcome loses"
    );
    assert!(apply(&mut current, &of(second, progress), now).is_ok());
    assert!(apply(&mut current, &of(second, complete("/images/new.png")), now).is_ok());
    let message = current.as_ref().unwrap();
    assert_eq!(message.status, JobStatus::Complete);
    assert_eq!(message.image_url.as_deref(), Some("/images/new.png"));
    assert_eq!(
        apply(
            &mut current,
            &of(second, complete("/images/again.png")),
            now
        ),
        Err(Refusal::RunEnded),
        "a recorded result is never overwritten"
    );
}

#[test]
fn a_job_handed_back_to_run_elsewhere_is_declined_by_its_backend_while_another_is_healthy() {
    let mut current = created();
    let now = Utc::now();
    let run = start(&mut current);
    let back = Change::Transition(Transition::HandBack {
        run,
        elsewhere: true,
    });
    apply(&mut current, &back, now).unwrap();
    let on = |backend: &str, may_decline| {
        Change::Transition(Transition::Processing {
            backend: backend.into(),
            may_decline,
        })
    };
    assert_eq!(
        apply(&mut current, &on("http://gpu1", true), now),
        Err(Refusal::RunElsewhere)
    );
    // With no other backend healthy it runs where it is.
    let mut alone = current.clone();
    assert!(apply(&mut alone, &on("http://gpu1", false), now).is_ok());
    // Another backend takes it.
    apply(&mut current, &on("http://gpu2", true), now).unwrap();
    let message = current.as_ref().unwrap();
    assert_eq!(
        (message.backend.as_deref(), message.runs),
        (Some("http://gpu2"), run + 1)
    );
}
