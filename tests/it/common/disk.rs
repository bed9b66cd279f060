//! A small filesystem the tests can fill and free: a tmpfs mounted over a folder (needs root,
//! which `.ci/run` has; the tests that use it are ignored otherwise).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a few MiB mounted at `path`, unmounted when dropped unless [`keep`](Self::keep)
/// was called (a database server still holding files there must never lose them: it would
/// fail every checkpoint after).
pub struct SmallDisk {
    pub path: PathBuf,
    filler: PathBuf,
    keep: bool,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB at `path` (an empty folder), owned by `owner` if given
    /// (PostgreSQL's tablespaces must belong to its server's user).
    pub fn mount(path: &Path, mib: u32, owner: Option<&str>) -> SmallDisk {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0777")])
            .arg("tmpfs")
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs at {} failed: this test needs root",
            path.display()
        );
        if let Some(owner) = owner {
            let status = Command::new("chown")
                .arg(owner)
                .arg(path)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown {owner} {}", path.display());
        }
        SmallDisk {
            path: path.to_owned(),
            filler: path.join("filler"),
            keep: false,
        }
    }

    /// Fills every free byte (a file written until the disk refuses).
    pub fn fill(&self) {
        let mut file = std::fs::File::create(&self.filler).expect("filler");
        let block = vec![0u8; 64 * 1024];
        loop {
            if file.write_all(&block).is_err() {
                break;
            }
        }
        // Whatever a smaller write still fits.
        while file.write_all(&[0u8; 512]).is_ok() {}
        let _ = file.sync_all();
    }

    /// Frees what [`fill`](Self::fill) took.
    pub fn free(&self) {
        std::fs::remove_file(&self.filler).expect("remove the filler");
    }
}

impl SmallDisk {
    /// Leaves the disk mounted when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if !self.keep {
            let _ = Command::new("umount").arg(&self.path).status();
        }
    }
}
