//! Tells, at start, whether this process's images folder is the one the other processes on the
//! same Redis prefix use: an image written by one process must be served by every process, so
//! with several processes the folder must be one shared directory.
//!
//! The first process to start leaves a marker file of a random name in its folder and names
//! it in Redis (`{prefix}:images`, kept while any process runs: renewed every
//! [`RENEW_EVERY`], gone [`FORGOTTEN_AFTER`] after the last one stopped). A process that finds
//! the key but not the file in its own folder refuses to start.

use crate::redis_client::{RedisError, Role, builder, check_prefix};
use fred::prelude::{ClientLike, Expiration, KeysInterface, SetOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the key outlives the last process that renewed it.
const FORGOTTEN_AFTER: Duration = Duration::from_secs(300);
/// How often a running process renews it.
const RENEW_EVERY: Duration = Duration::from_secs(60);

/// Why the folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// Another process on this prefix uses another folder.
    #[error(
        "IMAGES_DIR ({dir}) is not the images folder of the other gateway processes on this Redis prefix: their marker {marker} is not in it. Several processes must share one images folder (docs/operations.md, \"Running several gateway processes\")"
    )]
    NotShared {
        /// This process's folder.
        dir: String,
        /// The marker file the others left.
        marker: String,
    },
    /// The marker file could not be written or read.
    #[error("cannot write a marker file in IMAGES_DIR ({dir}): {source}")]
    Io {
        /// This process's folder.
        dir: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] RedisError),
}

/// Checks `dir` against the processes on `prefix` at `url`, then keeps the key alive in the
/// background for as long as the returned task runs.
pub async fn check_and_keep(
    url: &str,
    prefix: &str,
    dir: &Path,
) -> Result<tokio::task::JoinHandle<()>, FolderError> {
    check_prefix(prefix)?;
    let key = format!("{{{prefix}}}:images");
    let client = builder(url, Role::Commands)?
        .build()
        .map_err(|err| RedisError::failed("creating the images folder check's client", err))?;
    client
        .init()
        .await
        .map_err(|err| RedisError::failed("connecting for the images folder check", err))?;
    let marker = loop {
        let named: Option<String> = client
            .get(&key)
            .await
            .map_err(|err| RedisError::failed("reading the images folder marker", err))?;
        if let Some(name) = named {
            if !is_marker(&name) || !dir.join(&name).is_file() {
                let _ = client.quit().await;
                return Err(FolderError::NotShared {
                    dir: dir.display().to_string(),
                    marker: name,
                });
            }
            break name;
        }
        let name = format!(".shared-{}", uuid::Uuid::now_v7());
        write_marker(dir, &name)?;
        let set: Option<String> = client
            .set(
                &key,
                name.as_str(),
                Some(Expiration::EX(FORGOTTEN_AFTER.as_secs() as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(|err| RedisError::failed("naming the images folder marker", err))?;
        if set.is_some() {
            break name;
        }
        // Another process named its own first: check against that one.
        let _ = std::fs::remove_file(dir.join(&name));
    };
    Ok(tokio::spawn(keep(client, key, marker, dir.to_owned())))
}

fn is_marker(name: &str) -> bool {
    name.starts_with(".shared-") && !name.contains(['/', '\\'])
}

fn write_marker(dir: &Path, name: &str) -> Result<(), FolderError> {
    std::fs::write(
        dir.join(name),
        b"forge-gateway: this folder is shared by its processes\n",
    )
    .map_err(|source| FolderError::Io {
        dir: dir.display().to_string(),
        source,
    })
}

/// Renews the key while the process runs; names this folder's marker again if Redis lost it.
async fn keep(client: fred::clients::Client, key: String, marker: String, dir: PathBuf) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        if !dir.join(&marker).is_file() {
            let _ = write_marker(&dir, &marker);
        }
        let set: Result<Option<String>, _> = client
            .set(
                &key,
                marker.as_str(),
                Some(Expiration::EX(FORGOTTEN_AFTER.as_secs() as i64)),
                None,
                false,
            )
            .await;
        if let Err(err) = set {
            tracing::debug!(error = %err, "cannot renew the images folder marker");
        }
    }
}
