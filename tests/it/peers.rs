//! Forge answers that lie (issue 22): a body of hundreds of MB, with and without a length, a
//! PNG bomb, an image of another size. Each job fails with R9.4, nothing is served, and the
//! gateway's memory stays within idle + 300 MiB throughout.

use crate::common::*;
use std::time::{Duration, Instant};

/// What became of one job against a lying Forge.
struct Outcome {
    /// The job's final view.
    done: serde_json::Value,
    /// The gateway's peak RSS over its idle one while the job ran (KiB).
    grew_kib: u64,
    /// The status `/images/<id>.png` answers.
    image_status: u16,
}

/// Runs one job against a fake Forge giving `answer`.
async fn one_job_against(answer: Txt2ImgAnswer) -> Outcome {
    let forge = FakeForge::start(answer).await;
    let storage = Storage::fresh();
    let mut env = storage.process_env(forge.url.clone());
    env.push(("FORGE_TIMEOUT", "60s".to_owned()));
    let gateway = GatewayProcess::start(&env).await;
    let client = gateway.client();
    let token = client.token("alice").await;
    let idle = gateway.rss_kib();
    let id = client.submit_id(&token, "a picture").await;
    let mut peak = idle;
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        peak = peak.max(gateway.rss_kib());
        let (_, message) = client.get(&token, &format!("/api/v1/messages/{id}")).await;
        if message["status"] != "queued" && message["status"] != "processing" {
            break message;
        }
        assert!(Instant::now() < deadline, "the job never ended: {message}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let image = client
        .http
        .get(format!("{}/images/{id}.png", client.base))
        .send()
        .await
        .expect("image");
    let image_status = image.status().as_u16();
    println!(
        "{id}: {} after {} bytes from Forge; RSS idle {idle} KiB, peak {peak} KiB",
        done["status"],
        forge.written.load(std::sync::atomic::Ordering::Relaxed)
    );
    gateway.kill().await;
    Outcome {
        done,
        grew_kib: peak.saturating_sub(idle),
        image_status,
    }
}

/// The job failed with R9.4, nothing is served, and memory stayed under idle + 300 MiB.
fn assert_refused(outcome: Outcome) {
    let Outcome {
        done,
        grew_kib,
        image_status,
    } = outcome;
    assert_eq!(done["status"], "error", "{done}");
    assert_eq!(done["error"]["code"], "unknown", "{done}");
    assert_eq!(image_status, 404, "a refused image is not served");
    assert!(
        grew_kib < 300 * 1024,
        "the gateway grew by {grew_kib} KiB reading one answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_600_mb_answer_fails_the_job_without_being_read() {
    let size = 600 * 1024 * 1024;
    assert_refused(one_job_against(Txt2ImgAnswer::HugeWithLength(size)).await);
    assert_refused(one_job_against(Txt2ImgAnswer::HugeStreamed(size)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_png_bomb_and_an_image_of_another_size_fail_the_job() {
    // 6 MB that decode to 16000x16000 RGBA (a gigabyte), for a 64x64 request.
    assert_refused(one_job_against(Txt2ImgAnswer::Png(png_zero_bomb(16_000))).await);
    // A real image, but not the 64x64 asked for.
    assert_refused(one_job_against(Txt2ImgAnswer::Png(png_of(128, 96))).await);
    // The same fake answering the right size completes and its image is served: the
    // refusals above are about the image, not the fake.
    let fine = one_job_against(Txt2ImgAnswer::Png(png_of(64, 64))).await;
    assert_eq!(fine.done["status"], "complete", "{}", fine.done);
    assert_eq!(fine.image_status, 200);
}
