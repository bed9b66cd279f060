//! Starting the gateway: the I/O runtime, the bundled simulator when no Forge is configured,
//! the actor system on its own thread ([`super::core`]), the HTTP server, and the warnings a
//! configuration deserves.

use super::core;
use super::{Core, IoRuntime, Parts, RunningApp, StartError, secrets};
use crate::config::Config;
use crate::http::auth::Auth;
use crate::http::ws::WsSettings;
use crate::http::ws::session::SessionTiming;
use crate::http::{self, HttpLimits, HttpParts, HttpState};
use crate::images::ImageStore;
use forge_sim::{Latency, SimConfig, SimServer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

fn fail(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> StartError {
    move |err| StartError::caused(what.to_string(), err)
}

/// Starts the gateway. Returns once it listens.
pub async fn start(config: Config) -> Result<RunningApp, StartError> {
    crate::forge_client::install_default_provider();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let io_runtime = io_runtime(threads)?;
    let (sim, forge_urls) = backends(&config, &io_runtime).await?;

    let images =
        ImageStore::open(&config.images_dir()).map_err(fail("cannot create the images folder"))?;
    let secrets = secrets::secrets(&config)?;
    let auth = Auth::new(&secrets.rules, secrets.admin_token).map_err(StartError::new)?;

    let listener = std::net::TcpListener::bind(config.bind)
        .map_err(fail(format!("cannot listen on {}", config.bind)))?;
    listener.set_nonblocking(true).map_err(fail("listener"))?;
    let addr = listener.local_addr().map_err(fail("listener"))?;

    let (core, system, system_thread) = actor_system(
        config.clone(),
        forge_urls.clone(),
        images.clone(),
        threads,
        &io_runtime,
    )
    .await?;
    let state = http_state(&config, &core, auth, images);
    forget_quiet_users(&state, &io_runtime);
    let (server_stop, server_done) = serve(listener, &state, &config, &io_runtime)?;

    warn_about(&config);
    tracing::info!(
        database = core.db.backend_name(),
        queue = core.queue.kind(),
        backends = core.forge.len(),
        "listening on http://{addr}"
    );
    Ok(RunningApp {
        addr,
        forge_urls: forge_urls
            .iter()
            .map(|url| url.as_str().trim_end_matches('/').to_owned())
            .collect(),
        parts: Some(Parts {
            io_runtime,
            server_stop,
            server_done,
            core,
            system,
            system_thread,
            state,
            sim,
            grace: config.shutdown_grace,
        }),
    })
}

/// The multi-thread runtime warp and the sockets run on.
fn io_runtime(threads: usize) -> Result<IoRuntime, StartError> {
    Ok(IoRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("io")
            .enable_all()
            .build()
            .map_err(fail("cannot start the I/O runtime"))?,
    )))
}

/// The configured Forge URLs, or the bundled simulator's when none is configured.
async fn backends(
    config: &Config,
    io_runtime: &IoRuntime,
) -> Result<(Option<SimServer>, Vec<url::Url>), StartError> {
    if !config.forge_urls.is_empty() {
        return Ok((
            None,
            config.forge_urls.iter().map(|url| url.0.clone()).collect(),
        ));
    }
    let sim_config = SimConfig {
        latency: Latency::Fixed(config.sim_latency),
        ..SimConfig::default()
    };
    let sim = io_runtime
        .spawn(SimServer::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            sim_config,
        ))
        .await
        .map_err(|err| StartError::caused("simulator task", err))?
        .map_err(fail("cannot start the bundled Forge simulator"))?;
    let url = sim.url();
    tracing::info!(url = %url, "no FORGE_URLS given: started the bundled Forge simulator");
    let parsed = url::Url::parse(&url).map_err(|err| StartError::caused("simulator URL", err))?;
    Ok((Some(sim), vec![parsed]))
}

/// Builds the core on an actix System running on a thread of its own; returns once it is
/// built (or failed to be).
async fn actor_system(
    config: Config,
    forge_urls: Vec<url::Url>,
    images: ImageStore,
    threads: usize,
    io_runtime: &IoRuntime,
) -> Result<(Core, actix::System, std::thread::JoinHandle<()>), StartError> {
    let (core_tx, core_rx) = oneshot::channel::<Result<(Core, actix::System), StartError>>();
    let io = io_runtime.handle().clone();
    let system_thread = std::thread::Builder::new()
        .name("actors".into())
        .spawn(move || {
            let system = actix::System::new();
            let built = system.block_on(core::build_core(config, forge_urls, images, threads, io));
            let ok = built.is_ok();
            let _ = core_tx.send(built.map(|core| (core, actix::System::current())));
            if ok {
                let _ = system.run();
            }
        })
        .map_err(fail("cannot start the actor thread"))?;
    let (core, system) = core_rx
        .await
        .map_err(|_| StartError::new("the actor system stopped while starting"))??;
    Ok((core, system, system_thread))
}

/// What the HTTP layer needs, from the configuration and the core.
fn http_state(config: &Config, core: &Core, auth: Auth, images: ImageStore) -> Arc<HttpState> {
    HttpState::new(HttpParts {
        gateway: core.gateway.clone(),
        auth,
        images,
        registry: core.registry.clone(),
        metrics: core.metrics.clone(),
        arbiters: core.arbiters.clone(),
        ws: WsSettings {
            timing: SessionTiming {
                heartbeat: config.ws_heartbeat,
                idle_timeout: config.ws_idle_timeout,
            },
            outbox_frames: config.ws_outbox as usize,
            outbox_bytes: config.ws_outbox_bytes,
            command_queue: config.ws_command_queue as usize,
            close_timeout: config.ws_close_timeout,
        },
        ws_commands_per_second: config.ws_commands_per_second,
        limits: HttpLimits {
            max_connections: config.max_connections as usize,
            header_timeout: config.http_header_timeout,
            body_timeout: config.http_body_timeout,
            idle_timeout: config.http_idle_timeout,
            write_timeout: config.http_write_timeout,
            max_connections_per_address: config.max_connections_per_address(),
        },
        dev_mode: config.dev_mode(),
    })
}

/// Forgets the command-rate buckets of quiet users now and then.
fn forget_quiet_users(state: &Arc<HttpState>, io_runtime: &IoRuntime) {
    let state = state.clone();
    io_runtime.spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            state.ws_rate.forget_quiet();
        }
    });
}

/// Serves HTTP on `listener` until the returned sender fires; the receiver hears when the
/// server is done.
fn serve(
    listener: std::net::TcpListener,
    state: &Arc<HttpState>,
    config: &Config,
    io_runtime: &IoRuntime,
) -> Result<(oneshot::Sender<()>, oneshot::Receiver<()>), StartError> {
    let routes = http::routes(state.clone());
    let (server_stop, stop_signal) = oneshot::channel::<()>();
    let (done_tx, server_done) = oneshot::channel::<()>();
    let listener = {
        let _guard = io_runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(fail("listener"))?
    };
    let server = http::server::serve(
        listener,
        routes,
        state.clone(),
        async move {
            let _ = stop_signal.await;
        },
        config.shutdown_grace,
    );
    io_runtime.spawn(async move {
        server.await;
        let _ = done_tx.send(());
    });
    Ok((server_stop, server_done))
}

/// Settings that work but deserve a word.
fn warn_about(config: &Config) {
    if config.stuck_after <= config.job_lease {
        tracing::warn!(
            stuck_after = %humantime::format_duration(config.stuck_after),
            job_lease = %humantime::format_duration(config.job_lease),
            "STUCK_AFTER is not above JOB_LEASE: a killed process's jobs are marked stuck before they are handed back, and jobs waiting for its backend slots may be too"
        );
    }
    if config.dev_mode() {
        tracing::warn!(
            "DEV MODE is on: POST /api/v1/dev/token issues a token for any user name; never expose this server"
        );
    }
}
