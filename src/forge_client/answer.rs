//! Reading Forge's answers, bounded: the body up to a limit (the call fails as soon as it is
//! passed), the part of a `txt2img` answer the gateway uses (the image and the seed Forge
//! really used), and the check that an image is a real PNG of the size asked for, decoded row
//! by row so a decompression bomb never allocates more than a row.

use super::Progress;
use super::failure::{ForgeFailure, classify};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};

/// How much of an error answer's body is kept for the log.
const ERROR_BODY_BYTES: usize = 300;

/// The most a PNG's decoder may allocate besides the image's rows (its chunks and window).
const PNG_DECODER_BYTES: usize = 4 * 1024 * 1024;

/// Reads an answer's body, failing as soon as it passes `limit` bytes (a `Content-Length`
/// above it fails before anything is read). An error status reads only the start of the body.
pub(super) async fn read_answer(
    mut answer: reqwest::Response,
    limit: usize,
) -> Result<Bytes, ForgeFailure> {
    let status = answer.status();
    let limit = if status.is_success() {
        limit
    } else {
        ERROR_BODY_BYTES
    };
    if status.is_success()
        && let Some(length) = answer.content_length()
        && length > limit as u64
    {
        return Err(too_large(length, limit));
    }
    let capacity = answer.content_length().unwrap_or(0).min(limit as u64) as usize;
    let mut body = BytesMut::with_capacity(capacity);
    loop {
        // Any error while reading the body means the connection broke mid-answer.
        let chunk = answer.chunk().await.map_err(|err| match classify(err) {
            ForgeFailure::BadAnswer {
                cause: Some(cause), ..
            } => ForgeFailure::Connection(cause),
            other => other,
        })?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > limit {
            if !status.is_success() {
                body.extend_from_slice(&chunk[..limit - body.len()]);
                break;
            }
            return Err(too_large((body.len() + chunk.len()) as u64, limit));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(ForgeFailure::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(body.freeze())
}

fn too_large(length: u64, limit: usize) -> ForgeFailure {
    ForgeFailure::bad_answer(format_args!(
        "answer of at least {length} bytes, past FORGE_MAX_ANSWER ({limit} bytes)"
    ))
}

/// The longest estimate of time left taken from Forge (a day): anything longer cannot be true
/// of a job that fails at `FORGE_TIMEOUT`.
const MAX_ETA_SECONDS: f64 = 86_400.0;

#[derive(serde::Deserialize)]
struct ProgressAnswer {
    #[serde(default)]
    progress: f64,
    #[serde(default)]
    eta_relative: Option<f64>,
    #[serde(default)]
    state: ProgressState,
    #[serde(default)]
    current_image: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct ProgressState {
    #[serde(default)]
    sampling_step: u64,
    #[serde(default)]
    sampling_steps: u64,
}

/// A progress answer, with what cannot be true left out: a fraction outside 0..1 is clamped
/// (NaN is 0), an estimate that is negative, not finite or past a day is none, and a preview
/// is kept only if it is a PNG no larger than the largest image a job may ask for, that
/// decodes (a bomb is refused by its header's size).
pub(super) fn read_progress(body: &[u8]) -> Result<Progress, ForgeFailure> {
    let answer: ProgressAnswer =
        serde_json::from_slice(body).map_err(|err| ForgeFailure::unparsable("progress", err))?;
    let preview_png = answer
        .current_image
        .filter(|image| !image.is_empty())
        .and_then(|image| {
            base64::engine::general_purpose::STANDARD
                .decode(image.trim())
                .ok()
        })
        .filter(|png| preview_is_sane(png))
        .map(Bytes::from);
    Ok(Progress {
        fraction: if answer.progress.is_finite() {
            answer.progress.clamp(0.0, 1.0)
        } else {
            0.0
        },
        eta_seconds: answer
            .eta_relative
            .filter(|eta| eta.is_finite() && (0.0..=MAX_ETA_SECONDS).contains(eta)),
        step: answer.state.sampling_step,
        steps: answer.state.sampling_steps,
        preview_png,
    })
}

fn preview_is_sane(png: &[u8]) -> bool {
    let Ok(reader) = png::Decoder::new(std::io::Cursor::new(png)).read_info() else {
        return false;
    };
    let (width, height) = (reader.info().width, reader.info().height);
    let max = crate::domain::params::MAX_SIDE;
    width <= max && height <= max && check_png(png, width, height).is_ok()
}

/// The part of a `txt2img` answer the gateway reads.
#[derive(serde::Deserialize)]
pub(super) struct Txt2ImgAnswer<'a> {
    #[serde(borrow)]
    pub images: Option<Vec<std::borrow::Cow<'a, str>>>,
    #[serde(borrow, default)]
    pub info: Option<InfoField<'a>>,
}

/// `info` is a string in every Forge seen; anything else is ignored rather than failing the job.
#[derive(serde::Deserialize)]
#[serde(untagged)]
pub(super) enum InfoField<'a> {
    Text(#[serde(borrow)] std::borrow::Cow<'a, str>),
    Other(serde::de::IgnoredAny),
}

/// The seed and the checkpoint inside `info` (itself a JSON document in a string).
#[derive(serde::Deserialize)]
pub(super) struct InfoSeed {
    pub seed: Option<i64>,
    pub sd_model_name: Option<String>,
}

/// The image and the seed of a `txt2img` answer, checked: a PNG of exactly `width`×`height`.
/// A seed Forge reports that cannot have been used (negative: "random") is left out.
pub(super) fn read_txt2img(
    body: &[u8],
    width: u32,
    height: u32,
) -> Result<(Bytes, Option<i64>, Option<String>), ForgeFailure> {
    // Typed, borrowing the base64 text: a `Value` tree of Forge's answer (its `info` and
    // `parameters` included) cost more than the rest of reading it.
    let answer: Txt2ImgAnswer = serde_json::from_slice(body)
        .map_err(|err| ForgeFailure::unparsable("not the expected JSON", err))?;
    let image = answer
        .images
        .as_ref()
        .and_then(|images| images.first())
        .map(|image| image.as_ref())
        .ok_or_else(|| ForgeFailure::bad_answer("no images[0] string"))?;
    let encoded = image.split_once("base64,").map_or(image, |(_, data)| data);
    let png = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|err| ForgeFailure::unparsable("images[0] is not base64", err))?;
    check_png(&png, width, height)?;
    let info = match answer.info {
        Some(InfoField::Text(info)) => serde_json::from_str::<InfoSeed>(&info).ok(),
        _ => None,
    };
    let seed = info
        .as_ref()
        .and_then(|info| info.seed)
        .filter(|seed| *seed >= 0);
    let model = info
        .and_then(|info| info.sd_model_name)
        .filter(|name| crate::domain::models::is_name(name));
    Ok((Bytes::from(png), seed, model))
}

/// Checks that `png` is a PNG of exactly `width`×`height` that decodes in full. The size is
/// read from its header before anything is decoded, and rows are decoded one at a time, so a
/// PNG that declares a huge image (a decompression bomb) is refused without allocating it.
pub(super) fn check_png(png: &[u8], width: u32, height: u32) -> Result<(), ForgeFailure> {
    let mut decoder = png::Decoder::new_with_limits(
        std::io::Cursor::new(png),
        png::Limits {
            bytes: PNG_DECODER_BYTES,
        },
    );
    decoder.set_ignore_text_chunk(true);
    decoder.set_ignore_iccp_chunk(true);
    let mut reader = decoder
        .read_info()
        .map_err(|err| ForgeFailure::unparsable("not a PNG", err))?;
    let (got_width, got_height) = {
        let info = reader.info();
        (info.width, info.height)
    };
    if (got_width, got_height) != (width, height) {
        return Err(ForgeFailure::bad_answer(format_args!(
            "an image of {got_width}x{got_height} for a request of {width}x{height}"
        )));
    }
    while reader
        .next_row()
        .map_err(|err| ForgeFailure::unparsable("PNG does not decode", err))?
        .is_some()
    {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_of(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer
            .write_image_data(&vec![7u8; (width * height * 4) as usize])
            .unwrap();
        writer.finish().unwrap();
        out
    }

    fn answer(png: &[u8], info: &str) -> String {
        let image = base64::engine::general_purpose::STANDARD.encode(png);
        serde_json::json!({"images": [image], "parameters": {"x": [1, 2]}, "info": info})
            .to_string()
    }

    #[test]
    fn a_txt2img_answer_is_read_for_its_image_seed_and_model_only() {
        let png = png_of(8, 8);
        let (image, seed, model) = read_txt2img(
            answer(
                &png,
                r#"{"seed": 42, "all_seeds": [42], "sd_model_name": "b"}"#,
            )
            .as_bytes(),
            8,
            8,
        )
        .unwrap();
        assert_eq!(&image[..], &png[..]);
        assert_eq!((seed, model.as_deref()), (Some(42), Some("b")));
        // A checkpoint name Forge could not have, kept by nobody.
        for bad in [
            r#""zz\u0001\n""#,
            r#""   ""#,
            &format!("{:?}", "x".repeat(300)),
        ] {
            let info = format!(r#"{{"seed": 1, "sd_model_name": {bad}}}"#);
            assert_eq!(
                read_txt2img(answer(&png, &info).as_bytes(), 8, 8)
                    .unwrap()
                    .2,
                None,
                "{bad}"
            );
        }
        // An `info` that is not a string is ignored, not a failure; so is a seed that cannot
        // have been used.
        let image = base64::engine::general_purpose::STANDARD.encode(&png);
        let other = serde_json::json!({"images": [image], "info": {"seed": 1}}).to_string();
        assert_eq!(read_txt2img(other.as_bytes(), 8, 8).unwrap().1, None);
        assert_eq!(
            read_txt2img(answer(&png, r#"{"seed": -1}"#).as_bytes(), 8, 8)
                .unwrap()
                .1,
            None
        );
        // No images, or images that are not strings: not the expected answer.
        for bad in [
            r#"{"info":"x"}"#,
            r#"{"images":[1]}"#,
            "<html>",
            r#"{"images":["%%"]}"#,
        ] {
            assert!(read_txt2img(bad.as_bytes(), 8, 8).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_png_must_decode_and_be_the_size_asked_for() {
        assert!(check_png(b"\x89PNG\r\n\x1a\nnot really", 8, 8).is_err());
        assert!(check_png(b"GIF89a", 8, 8).is_err());
        assert!(check_png(&png_of(8, 8), 8, 8).is_ok());
        let err = check_png(&png_of(16, 8), 8, 8).unwrap_err();
        assert!(err.detail().contains("16x8"), "{}", err.detail());
        // Truncated: the header is right, the data is not all there.
        let whole = png_of(64, 64);
        assert!(check_png(&whole[..whole.len() / 2], 64, 64).is_err());
    }

    #[test]
    fn a_progress_answer_is_read_for_what_can_be_true() {
        let progress = read_progress(
            br#"{"progress": 0.5, "eta_relative": 1e300, "state": {"sampling_step": 3, "sampling_steps": 20}}"#,
        )
        .unwrap();
        assert_eq!((progress.fraction, progress.eta_seconds), (0.5, None));
        assert_eq!((progress.step, progress.steps), (3, 20));
        let progress = read_progress(br#"{"progress": 7, "eta_relative": -1}"#).unwrap();
        assert_eq!((progress.fraction, progress.eta_seconds), (1.0, None));
        let progress = read_progress(br#"{"progress": 0.25, "eta_relative": 12.5}"#).unwrap();
        assert_eq!(progress.eta_seconds, Some(12.5));
        let image = base64::engine::general_purpose::STANDARD.encode(png_of(8, 8));
        let with = format!(r#"{{"progress": 0.1, "current_image": "{image}"}}"#);
        assert!(
            read_progress(with.as_bytes())
                .unwrap()
                .preview_png
                .is_some()
        );
        let broken = r#"{"progress": 0.1, "current_image": "aGVsbG8="}"#;
        assert!(
            read_progress(broken.as_bytes())
                .unwrap()
                .preview_png
                .is_none()
        );
        assert!(read_progress(b"<html>").is_err());
    }

    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        // A header declaring 16000x16000 RGBA (1 GB of pixels) over a little data: refused by
        // its size before any row is decoded.
        let mut bomb = png_of(8, 8);
        bomb[16..20].copy_from_slice(&16000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&16000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = check_png(&bomb, 64, 64).unwrap_err();
        assert!(err.detail().contains("16000x16000"), "{}", err.detail());
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
