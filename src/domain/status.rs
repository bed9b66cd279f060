//! Job statuses and the one place where transitions between them are checked.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The status of a message's job.
///
/// `queued → processing → complete | error`, `queued | processing → cancelled | error`, and
/// `processing → queued` when the run ends before the job (its process stopped or died).
/// `complete`, `error` and `cancelled` are terminal: nothing leaves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting in the queue.
    Queued,
    /// A Forge backend is generating it.
    Processing,
    /// Done; the message has an image.
    Complete,
    /// Failed; the message has an error code and message.
    Error,
    /// Cancelled by its owner.
    Cancelled,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Complete,
        JobStatus::Error,
        JobStatus::Cancelled,
    ];

    /// The name used in the database, the API and events.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Complete => "complete",
            JobStatus::Error => "error",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// `complete`, `error` and `cancelled` are final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Complete | JobStatus::Error | JobStatus::Cancelled
        )
    }

    /// `queued` or `processing`.
    pub fn is_pending(self) -> bool {
        !self.is_terminal()
    }

    /// Whether a job in `self` may move to `next`. Staying in a pending status is not a
    /// transition and is always allowed (progress updates); staying in a terminal one is not.
    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            (Queued, Queued)
                | (Processing, Processing)
                | (Queued, Processing)
                | (Processing, Queued)
                | (Processing, Complete)
                | (Queued | Processing, Error | Cancelled)
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of the five.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::JobStatus::{self, *};

    #[test]
    fn allowed_transitions_are_exactly_the_lifecycle() {
        let allowed = [
            (Queued, Processing),
            (Processing, Queued),
            (Processing, Complete),
            (Processing, Error),
            (Queued, Error),
            (Queued, Cancelled),
            (Processing, Cancelled),
            (Queued, Queued),
            (Processing, Processing),
        ];
        for from in JobStatus::ALL {
            for to in JobStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn terminal_states_are_final() {
        for from in [Complete, Error, Cancelled] {
            assert!(from.is_terminal());
            for to in JobStatus::ALL {
                assert!(!from.can_become(to), "{from} -> {to} must be refused");
            }
        }
        assert!(Queued.is_pending() && Processing.is_pending());
    }

    #[test]
    fn names_round_trip() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert!("done".parse::<JobStatus>().is_err());
    }
}
