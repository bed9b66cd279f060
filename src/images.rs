//! Generated images on disk, and the bundled placeholder.

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// The URL of the placeholder image served while a breaker is open.
pub const PLACEHOLDER_URL: &str = "/images/placeholder.png";
const PLACEHOLDER_FILE: &str = "placeholder.png";

/// Where images live and how they are named.
#[derive(Clone)]
pub struct ImageStore {
    dir: PathBuf,
    placeholder: Arc<Vec<u8>>,
}

impl ImageStore {
    /// Creates the folder if needed.
    pub fn open(dir: &Path) -> std::io::Result<ImageStore> {
        for shard in 0..=u8::MAX {
            std::fs::create_dir_all(dir.join(format!("{shard:02x}")))?;
        }
        Ok(ImageStore {
            dir: dir.to_owned(),
            placeholder: Arc::new(placeholder_png()),
        })
    }

    /// Stores a job's image (replacing an earlier save of it whole); returns its URL.
    pub async fn save(&self, id: Uuid, png: Bytes) -> std::io::Result<String> {
        let name = format!("{id}.png");
        self.replace(id, &name, png).await?;
        Ok(format!("/images/{name}"))
    }

    /// Stores (overwrites) a job's live preview; returns its URL.
    pub async fn save_preview(&self, id: Uuid, png: Bytes) -> std::io::Result<String> {
        let name = format!("{id}.preview.png");
        self.replace(id, &name, png).await?;
        Ok(format!("/images/{name}"))
    }

    /// Deletes a job's live preview (the job ended). A preview that is not there is fine.
    pub async fn delete_preview(&self, id: Uuid) {
        self.remove(id, &format!("{id}.preview.png")).await;
    }

    /// Deletes every file of a job (retention): its image and its preview.
    pub async fn delete_job(&self, id: Uuid) {
        self.remove(id, &format!("{id}.png")).await;
        self.delete_preview(id).await;
    }

    async fn remove(&self, id: Uuid, name: &str) {
        match tokio::fs::remove_file(self.path_of(id, name)).await {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(file = name, error = %err, "could not delete an image file"),
        }
    }

    /// Writes a temporary file then renames it over `name`, so nobody ever reads half a file
    /// (a disk that fills mid-write leaves no partial image to serve): on any failure the
    /// temporary file is removed and `name` is untouched. One blocking call for all of it.
    async fn replace(&self, id: Uuid, name: &str, bytes: Bytes) -> std::io::Result<()> {
        let target = self.path_of(id, name);
        let temporary = target.with_file_name(format!(".{name}.{}.tmp", Uuid::now_v7().simple()));
        tokio::task::spawn_blocking(move || {
            let written = std::fs::write(&temporary, &bytes)
                .and_then(|()| std::fs::rename(&temporary, &target));
            if written.is_err() {
                let _ = std::fs::remove_file(&temporary);
            }
            written
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Where the file `name` of job `id` lives: one of 256 subfolders, so that concurrent
    /// writers rarely contend for one directory's lock and no folder grows huge.
    fn path_of(&self, id: Uuid, name: &str) -> PathBuf {
        self.dir.join(shard_of(id)).join(name)
    }

    /// An image to send by its file name, or `None` for any name that is not one of ours (which
    /// rules out path traversal: only `<uuid>.png`, `<uuid>.preview.png` and the placeholder):
    /// the open file and its length, read as it is sent, so a slow reader costs a buffer, not
    /// the whole image.
    pub async fn open_image(&self, file: &str) -> Option<StoredImage> {
        if file == PLACEHOLDER_FILE {
            return Some(StoredImage::Bundled(Bytes::copy_from_slice(
                &self.placeholder,
            )));
        }
        let opened = tokio::fs::File::open(self.path_for(file)?).await.ok()?;
        let length = opened.metadata().await.ok()?.len();
        Some(StoredImage::File(opened, length))
    }

    /// Where the file `file` is, if it is one of ours.
    fn path_for(&self, file: &str) -> Option<PathBuf> {
        let stem = file
            .strip_suffix(".preview.png")
            .or_else(|| file.strip_suffix(".png"))?;
        let id = Uuid::try_parse(stem).ok()?;
        let canonical = if file.ends_with(".preview.png") {
            format!("{id}.preview.png")
        } else {
            format!("{id}.png")
        };
        if canonical != file {
            return None;
        }
        Some(self.path_of(id, &canonical))
    }
}

/// An image ready to send.
pub enum StoredImage {
    /// A file on disk, and its length.
    File(tokio::fs::File, u64),
    /// The bundled placeholder.
    Bundled(Bytes),
}

/// The subfolder of a job's files: two hex digits from the random end of its id (the start of
/// a v7 id is a timestamp, which would put a burst of jobs in one folder).
fn shard_of(id: Uuid) -> String {
    format!("{:02x}", id.as_bytes()[15])
}

/// The bundled placeholder: a calm grey-blue card with a simple picture glyph, 512×512.
pub fn placeholder_png() -> Vec<u8> {
    const SIZE: u32 = 512;
    let mut pixels = Vec::with_capacity((SIZE * SIZE * 3) as usize);
    for y in 0..SIZE {
        for x in 0..SIZE {
            let (fx, fy) = (x as f32 / SIZE as f32, y as f32 / SIZE as f32);
            let mut rgb = [
                (200.0 - 40.0 * fy) as u8,
                (208.0 - 36.0 * fy) as u8,
                (220.0 - 20.0 * fy) as u8,
            ];
            let frame = (0.3..0.7).contains(&fx) && (0.32..0.68).contains(&fy);
            let border = frame && !((0.31..0.69).contains(&fx) && (0.33..0.67).contains(&fy));
            let sun = ((fx - 0.4).powi(2) + (fy - 0.42).powi(2)).sqrt() < 0.035;
            let hill = frame && fy > 0.6 - 0.12 * (1.0 - ((fx - 0.55).abs() * 5.0).min(1.0));
            if border || sun || hill {
                rgb = [120, 130, 150];
            }
            pixels.extend_from_slice(&rgb);
        }
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, SIZE, SIZE);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let written = encoder.write_header().and_then(|mut writer| {
            writer
                .write_image_data(&pixels)
                .and_then(|()| writer.finish())
        });
        if written.is_err() {
            out.clear();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    impl ImageStore {
        /// The bytes of an image by its file name.
        async fn read(&self, file: &str) -> Option<Vec<u8>> {
            match self.open_image(file).await? {
                StoredImage::Bundled(bytes) => Some(bytes.to_vec()),
                StoredImage::File(mut file, _) => {
                    let mut bytes = Vec::new();
                    tokio::io::AsyncReadExt::read_to_end(&mut file, &mut bytes)
                        .await
                        .ok()?;
                    Some(bytes)
                }
            }
        }
    }

    #[tokio::test]
    async fn only_our_names_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let id = Uuid::now_v7();
        let url = store.save(id, Bytes::from_static(b"png")).await.unwrap();
        assert_eq!(url, format!("/images/{id}.png"));
        assert_eq!(
            store.read(&format!("{id}.png")).await,
            Some(b"png".to_vec())
        );
        assert!(
            dir.path()
                .join(shard_of(id))
                .join(format!("{id}.png"))
                .exists()
        );
        // Saving again replaces the file whole.
        store.save(id, Bytes::from_static(b"png2")).await.unwrap();
        assert_eq!(
            store.read(&format!("{id}.png")).await,
            Some(b"png2".to_vec())
        );
        let preview = store
            .save_preview(id, Bytes::from_static(b"p1"))
            .await
            .unwrap();
        assert_eq!(preview, format!("/images/{id}.preview.png"));
        store
            .save_preview(id, Bytes::from_static(b"p2"))
            .await
            .unwrap();
        assert_eq!(
            store.read(&format!("{id}.preview.png")).await,
            Some(b"p2".to_vec())
        );
        store.delete_preview(id).await;
        assert_eq!(store.read(&format!("{id}.preview.png")).await, None);
        store.delete_preview(id).await;
        assert!(
            store.read(&format!("{id}.png")).await.is_some(),
            "only the preview went"
        );
        store
            .save_preview(id, Bytes::from_static(b"p3"))
            .await
            .unwrap();
        store.delete_job(id).await;
        assert_eq!(store.read(&format!("{id}.png")).await, None);
        assert_eq!(store.read(&format!("{id}.preview.png")).await, None);
        store.save(id, Bytes::from_static(b"png3")).await.unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"x").unwrap();
        for bad in [
            "../secret.txt",
            "secret.txt",
            "..%2Fsecret.txt",
            &format!("{}.png", id.simple()),
            &format!("{id}.PNG"),
            "",
            "/etc/passwd",
        ] {
            assert_eq!(store.read(bad).await, None, "{bad}");
        }
        assert!(
            store
                .read("placeholder.png")
                .await
                .is_some_and(|png| png.starts_with(b"\x89PNG"))
        );
    }
}
