//! The gateway as a child process (for kill and restart tests).

use super::{Client, DEADLINE, http_client};

/// A gateway running as a child process (for kill and restart tests).
pub struct GatewayProcess {
    pub child: tokio::process::Child,
    pub base: String,
    /// Every line it logged so far.
    pub logs: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Starts `forge-gateway` with `env` (plus JSON logs) and waits for its `listening on` line.
    pub async fn start(env: &[(&str, String)]) -> GatewayProcess {
        use tokio::io::AsyncBufReadExt;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_forge-gateway"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("gateway process starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let logs: std::sync::Arc<parking_lot::Mutex<Vec<String>>> = Default::default();
        let base = tokio::time::timeout(DEADLINE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                logs.lock().push(line.clone());
                if let Some(at) = line.find("listening on http://") {
                    let rest = &line[at + "listening on ".len()..];
                    let end = rest.find(['"', ' ']).unwrap_or(rest.len());
                    return Some(rest[..end].to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("the gateway logs its address");
        // Keep draining its log so the pipe never fills.
        let kept = logs.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().push(line);
            }
        });
        GatewayProcess { child, base, logs }
    }

    /// Its resident memory in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|line| line.starts_with("VmRSS:"))
                    .and_then(|line| line.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse().ok())
            })
            .expect("VmRSS")
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then wait for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("exits in time")
            .expect("exit status")
    }

    /// A client of this process.
    pub fn client(&self) -> Client {
        Client {
            base: self.base.clone(),
            http: http_client(),
        }
    }
}
