//! `--perf-out`: a `perf record` of the gateway around a scenario's measured part, for the
//! profiles behind `docs/benchmarks.md`.

use super::Ctx;
use crate::log;
use crate::report::ScenarioResult;
use std::time::Duration;

/// A running `perf record`.
pub(super) struct Perf {
    child: tokio::process::Child,
    path: String,
}

/// Starts `perf record` on the gateway (with `--perf-out`), into `<prefix>-<scenario>-<stores>.data`.
pub(super) fn start_perf(ctx: &Ctx, scenario: &str) -> Option<Perf> {
    let prefix = ctx.args.perf_out.as_ref()?;
    let pid = ctx.pid?;
    let path = format!(
        "{prefix}-{scenario}-{}.data",
        ctx.stores
            .to_lowercase()
            .replace("in-process", "mem")
            .replace([' ', '+'], "")
    );
    let child = tokio::process::Command::new("perf")
        .args([
            "record",
            "-F",
            "499",
            "-g",
            "-p",
            &pid.to_string(),
            "-o",
            &path,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    match child {
        Ok(child) => Some(Perf { child, path }),
        Err(err) => {
            log(format!("perf record could not start: {err}"));
            None
        }
    }
}

/// Stops `perf record` with SIGINT (so it writes a complete file) and waits for it.
pub(super) async fn finish_perf(perf: Option<Perf>, result: &mut ScenarioResult) {
    if let Some(mut perf) = perf {
        if let Some(pid) = perf.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(60), perf.child.wait())
            .await
            .is_err()
        {
            let _ = perf.child.start_kill();
        }
        result
            .notes
            .push(format!("perf profile of the gateway: {}", perf.path));
    }
}
