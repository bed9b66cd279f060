//! Estimated seconds until a queued job is done, from recent processing times.

/// An exponentially weighted mean of processing times and the number of backends working
/// the queue in parallel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EtaModel {
    /// Exponentially weighted mean seconds per job; `None` until a job has finished.
    mean_seconds: Option<f64>,
    backends: u32,
}

impl EtaModel {
    /// No history yet, `backends` working in parallel.
    pub fn new(backends: u32) -> Self {
        EtaModel {
            mean_seconds: None,
            backends,
        }
    }

    /// A job took `seconds` from its start to its end.
    pub fn record(&mut self, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        self.mean_seconds = Some(match self.mean_seconds {
            Some(mean) => mean * 0.8 + seconds * 0.2,
            None => seconds,
        });
    }

    /// Seconds until a job at `position` is done: the rounds of work ahead of it plus its own.
    pub fn for_position(&self, position: u32) -> Option<u32> {
        let mean = self.mean_seconds?;
        let rounds = position.div_ceil(self.backends.max(1));
        Some((f64::from(rounds) * mean).ceil().min(f64::from(u32::MAX)) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_history_no_estimate_then_rounds_of_the_mean() {
        let mut eta = EtaModel::new(2);
        assert_eq!(eta.for_position(1), None);
        eta.record(10.0);
        assert_eq!(eta.for_position(1), Some(10));
        assert_eq!(
            eta.for_position(2),
            Some(10),
            "two backends take the first two at once"
        );
        assert_eq!(eta.for_position(3), Some(20));
        eta.record(20.0);
        assert_eq!(eta.for_position(1), Some(12), "weighted towards the past");
        eta.record(f64::NAN);
        assert_eq!(eta.for_position(1), Some(12), "nonsense is ignored");
    }
}
