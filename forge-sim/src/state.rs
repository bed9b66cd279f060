//! State shared by every connection of one simulator: settings, counters, the generation lock
//! and the progress of whatever generation holds it.

use super::config::SimConfig;
use super::render::render_png;
pub(crate) use super::stats::Counters;
pub use super::stats::SimStats;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// What a generation draws, kept for previews.
#[derive(Clone, Debug)]
pub(crate) struct Picture {
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    pub prompt: String,
}

/// The generation that holds the lock, as `/sdapi/v1/progress` reports it.
struct Job {
    started: Instant,
    duration: Duration,
    steps: u32,
    batches: u32,
    hung: bool,
    interrupted: bool,
    skipped: bool,
    /// The step reached when an interrupt froze the job.
    frozen_unit: Option<u64>,
    timestamp: String,
    picture: Picture,
    preview: Option<Arc<str>>,
    stop: Arc<Notify>,
}

impl Job {
    /// Sampling steps done across all batches; never the last one, which ends the job.
    fn unit(&self, now: Instant) -> u64 {
        if let Some(unit) = self.frozen_unit {
            return unit;
        }
        let total = u64::from(self.steps) * u64::from(self.batches);
        if self.hung || self.duration.is_zero() || total == 0 {
            return 0;
        }
        let fraction = now.duration_since(self.started).as_secs_f64() / self.duration.as_secs_f64();
        ((fraction * total as f64) as u64).min(total.saturating_sub(1))
    }
}

/// One snapshot of `/sdapi/v1/progress`.
pub(crate) struct ProgressView {
    pub progress: f64,
    pub eta_relative: f64,
    pub job: String,
    pub job_count: u32,
    pub job_no: u32,
    pub job_timestamp: String,
    pub sampling_step: u32,
    pub sampling_steps: u32,
    pub interrupted: bool,
    pub skipped: bool,
    pub current_image: Option<Arc<str>>,
}

struct Progress {
    job: Option<Job>,
    last_timestamp: String,
}

/// Everything connections share.
pub(crate) struct Shared {
    config: Mutex<SimConfig>,
    rng: Mutex<StdRng>,
    pub counters: Counters,
    /// Forge generates one picture at a time; tokio's mutex is fair, so waiters are served
    /// in arrival order like Forge's queue lock.
    generation: tokio::sync::Mutex<()>,
    progress: Mutex<Progress>,
    /// The checkpoint loaded now (one of the configured models).
    loaded: Mutex<String>,
}

/// What a generation needs to describe itself while it runs.
pub(crate) struct JobSpec {
    /// The checkpoint the request asked for (`override_settings.sd_model_checkpoint`).
    pub model: Option<String>,
    pub duration: Duration,
    pub steps: u32,
    pub batches: u32,
    pub picture: Picture,
    pub hung: bool,
}

/// Held for the whole of a generation: owns the lock and the progress entry, and clears both
/// when dropped, also when the connection task is aborted at shutdown.
pub(crate) struct RunningJob<'a> {
    shared: &'a Shared,
    /// The checkpoint it runs on (what `info.sd_model_name` reports).
    pub model: String,
    /// The checkpoint loaded before, when this job switched.
    pub switched_from: Option<String>,
    stop: Arc<Notify>,
    _lock: tokio::sync::MutexGuard<'a, ()>,
}

impl RunningJob<'_> {
    /// Resolves when an interrupt or skip asks this job to end early.
    pub async fn stopped(&self) {
        self.stop.notified().await;
    }

    /// Whether an interrupt or skip reached this job.
    pub fn was_stopped(&self) -> bool {
        let progress = self.shared.progress.lock();
        progress
            .job
            .as_ref()
            .is_some_and(|job| job.interrupted || job.skipped)
    }
}

impl Drop for RunningJob<'_> {
    fn drop(&mut self) {
        // Runs before the lock guard field is dropped, so the next job never sees this one.
        self.shared.progress.lock().job = None;
        self.shared
            .counters
            .active_generations
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    pub fn new(config: SimConfig) -> Shared {
        Shared {
            loaded: Mutex::new(config.models.first().cloned().unwrap_or_default()),
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            config: Mutex::new(config),
            counters: Counters::default(),
            generation: tokio::sync::Mutex::new(()),
            progress: Mutex::new(Progress {
                job: None,
                last_timestamp: "0".to_owned(),
            }),
        }
    }

    pub fn config(&self) -> SimConfig {
        self.config.lock().clone()
    }

    /// Replaces the settings; a new seed restarts the generator so runs stay reproducible.
    pub fn set_config(&self, config: SimConfig) {
        let mut current = self.config.lock();
        if current.seed != config.seed {
            *self.rng.lock() = StdRng::seed_from_u64(config.seed);
        }
        let mut loaded = self.loaded.lock();
        if !config.models.contains(&loaded)
            && let Some(first) = config.models.first()
        {
            loaded.clone_from(first);
        }
        *current = config;
    }

    pub fn update_config(&self, change: impl FnOnce(&mut SimConfig)) {
        change(&mut self.config.lock());
    }

    pub fn stats(&self) -> SimStats {
        self.counters.snapshot()
    }

    pub fn reset_stats(&self) {
        self.counters.reset();
    }

    /// Runs `pick` on the seeded generator shared by all requests.
    pub fn random<T>(&self, pick: impl FnOnce(&mut StdRng) -> T) -> T {
        pick(&mut self.rng.lock())
    }

    /// A seed like Forge's random ones (below 2^32).
    pub fn random_seed(&self) -> u64 {
        self.random(|rng| rng.random_range(0..4_294_967_294u64))
    }

    /// Waits for the generation lock (in arrival order), then publishes the job as running.
    pub async fn begin(&self, spec: JobSpec) -> RunningJob<'_> {
        let lock = self.generation.lock().await;
        let previous = self.loaded();
        let model = self.load(spec.model.as_deref()).await;
        let switched_from = (model != previous).then_some(previous);
        let active = self
            .counters
            .active_generations
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        self.counters
            .max_concurrent_generations
            .fetch_max(active, Ordering::Relaxed);
        let stop = Arc::new(Notify::new());
        let timestamp = job_timestamp(SystemTime::now());
        let mut progress = self.progress.lock();
        progress.last_timestamp.clone_from(&timestamp);
        progress.job = Some(Job {
            started: Instant::now(),
            duration: spec.duration,
            steps: spec.steps.max(1),
            batches: spec.batches.max(1),
            hung: spec.hung,
            interrupted: false,
            skipped: false,
            frozen_unit: None,
            timestamp,
            picture: spec.picture,
            preview: None,
            stop: stop.clone(),
        });
        drop(progress);
        RunningJob {
            shared: self,
            model,
            switched_from,
            stop,
            _lock: lock,
        }
    }

    /// The checkpoint loaded now.
    pub fn loaded(&self) -> String {
        self.loaded.lock().clone()
    }

    /// Loads the checkpoint `asked` names when it is a configured one and not loaded yet,
    /// which takes `model_switch`; ignores one it does not know, as Forge does. Returns the
    /// checkpoint loaded afterwards. Called with the generation lock held.
    pub async fn load(&self, asked: Option<&str>) -> String {
        let config = self.config();
        let loaded = self.loaded();
        let Some(wanted) = asked.and_then(|asked| crate::models::find(&config.models, asked))
        else {
            return loaded;
        };
        if *wanted == loaded {
            return loaded;
        }
        if !config.model_switch.is_zero() {
            tokio::time::sleep(config.model_switch).await;
        }
        Counters::bump(&self.counters.model_switches);
        self.loaded.lock().clone_from(wanted);
        wanted.clone()
    }

    /// Interrupt (or skip) whatever runs. A hung job only records the request: a wedged GPU
    /// does not listen.
    pub fn interrupt(&self, skip: bool) {
        Counters::bump(&self.counters.interrupts);
        let now = Instant::now();
        let mut progress = self.progress.lock();
        let Some(job) = progress.job.as_mut() else {
            return;
        };
        if skip {
            job.skipped = true;
        } else {
            job.interrupted = true;
        }
        if !job.hung {
            job.frozen_unit = Some(job.unit(now));
            // `notify_one` keeps a permit, so a job that is not waiting yet still sees it.
            job.stop.notify_one();
        }
    }

    /// The progress of the running job, if any; `with_image` asks for a live preview.
    pub fn progress(&self, with_image: bool) -> ProgressView {
        Counters::bump(&self.counters.progress_requests);
        let now = Instant::now();
        let mut progress = self.progress.lock();
        let last_timestamp = progress.last_timestamp.clone();
        let Some(job) = progress.job.as_mut() else {
            return ProgressView {
                progress: 0.0,
                eta_relative: 0.0,
                job: String::new(),
                job_count: 0,
                job_no: 0,
                job_timestamp: last_timestamp,
                sampling_step: 0,
                sampling_steps: 0,
                interrupted: false,
                skipped: false,
                current_image: None,
            };
        };
        let unit = job.unit(now);
        let total = u64::from(job.steps) * u64::from(job.batches);
        let elapsed = now.duration_since(job.started).as_secs_f64();
        // Forge reports 0.01 before the first step so that clients can tell "started" from idle.
        let fraction = if unit == 0 {
            0.01
        } else {
            unit as f64 / total as f64
        };
        let eta_relative = if job.hung {
            // Forge's estimate, elapsed / progress - elapsed, which grows while nothing moves.
            elapsed / fraction - elapsed
        } else {
            (job.duration.as_secs_f64() - elapsed).max(0.0)
        };
        let current_image = if with_image && !job.hung {
            Some(
                job.preview
                    .get_or_insert_with(|| preview(&job.picture))
                    .clone(),
            )
        } else {
            None
        };
        let steps = u64::from(job.steps);
        ProgressView {
            progress: fraction,
            eta_relative,
            job: if job.batches > 1 {
                format!("Batch {} out of {}", unit / steps + 1, job.batches)
            } else {
                "txt2img".to_owned()
            },
            job_count: job.batches,
            job_no: u32::try_from(unit / steps).unwrap_or(u32::MAX),
            job_timestamp: job.timestamp.clone(),
            sampling_step: u32::try_from(unit % steps).unwrap_or(u32::MAX),
            sampling_steps: job.steps,
            interrupted: job.interrupted,
            skipped: job.skipped,
            current_image,
        }
    }
}

/// The live preview: the final picture at thumbnail size, as a base64 PNG.
fn preview(picture: &Picture) -> Arc<str> {
    const SIDE: u32 = 64;
    let (width, height) = if picture.width >= picture.height {
        (SIDE, (SIDE * picture.height / picture.width.max(1)).max(1))
    } else {
        ((SIDE * picture.width / picture.height.max(1)).max(1), SIDE)
    };
    BASE64
        .encode(render_png(width, height, picture.seed, &picture.prompt))
        .into()
}

/// Forge's `job_timestamp`: `YYYYmmddHHMMSS` (here in UTC).
pub(crate) fn job_timestamp(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(duration: Duration, steps: u32, batches: u32) -> JobSpec {
        JobSpec {
            model: None,
            duration,
            steps,
            batches,
            picture: Picture {
                width: 512,
                height: 256,
                seed: 1,
                prompt: "p".into(),
            },
            hung: false,
        }
    }

    #[test]
    fn timestamps_are_forge_shaped() {
        assert_eq!(job_timestamp(UNIX_EPOCH), "19700101000000");
        let later = UNIX_EPOCH + Duration::from_secs(1_709_251_199); // 2024-02-29 23:59:59
        assert_eq!(job_timestamp(later), "20240229235959");
    }

    #[tokio::test]
    async fn idle_progress_is_zero() {
        let shared = Shared::new(SimConfig::default());
        let view = shared.progress(true);
        assert_eq!(view.progress, 0.0);
        assert_eq!(view.sampling_step, 0);
        assert!(view.job.is_empty());
        assert!(view.current_image.is_none());
    }

    #[tokio::test]
    async fn a_job_starts_at_one_percent_and_clears_on_drop() {
        let shared = Shared::new(SimConfig::default());
        let job = shared.begin(spec(Duration::from_secs(60), 20, 1)).await;
        let view = shared.progress(true);
        assert_eq!(view.progress, 0.01);
        assert_eq!(view.sampling_steps, 20);
        assert_eq!(view.job, "txt2img");
        assert!(view.eta_relative > 59.0);
        assert!(view.current_image.is_some());
        assert!(shared.progress(false).current_image.is_none());
        drop(job);
        assert_eq!(shared.progress(true).progress, 0.0);
        assert_eq!(shared.stats().max_concurrent_generations, 1);
    }

    #[tokio::test]
    async fn an_interrupt_wakes_the_job_even_before_it_waits() {
        let shared = Shared::new(SimConfig::default());
        let job = shared.begin(spec(Duration::from_secs(60), 20, 1)).await;
        shared.interrupt(false);
        tokio::time::timeout(Duration::from_secs(5), job.stopped())
            .await
            .expect("the interrupt is not lost");
        assert!(job.was_stopped());
        assert!(shared.progress(false).interrupted);
        drop(job);
        shared.interrupt(false);
        assert_eq!(shared.stats().interrupts, 2);
    }

    #[tokio::test]
    async fn a_finished_unit_count_never_reaches_the_total() {
        let shared = Shared::new(SimConfig::default());
        let _job = shared.begin(spec(Duration::from_nanos(1), 4, 2)).await;
        let view = shared.progress(false);
        assert_eq!(view.job_no, 1);
        assert_eq!(view.sampling_step, 3);
        assert!(view.progress < 1.0);
        assert_eq!(view.job, "Batch 2 out of 2");
    }
}
