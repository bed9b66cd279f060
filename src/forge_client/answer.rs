//! Reading Forge's answers: the part of a `txt2img` answer the gateway uses (the image and
//! the seed Forge really used), progress, and the check that an image is a real PNG.

use super::failure::ForgeFailure;

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

/// The seed inside `info` (itself a JSON document in a string).
#[derive(serde::Deserialize)]
pub(super) struct InfoSeed {
    pub seed: Option<i64>,
}

/// Decodes the PNG fully: the answer must hold a real image of the requested size.
pub(super) fn check_png(png: &[u8], width: u32, height: u32) -> Result<(), ForgeFailure> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder
        .read_info()
        .map_err(|err| ForgeFailure::unparsable("not a PNG", err))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| ForgeFailure::bad_answer("PNG too large"))?;
    let mut pixels = vec![0; size];
    let frame = reader
        .next_frame(&mut pixels)
        .map_err(|err| ForgeFailure::unparsable("PNG does not decode", err))?;
    if (frame.width, frame.height) != (width, height) {
        // Forge may round sizes; a different size is still an image, so keep it but say so.
        tracing::debug!(want = ?(width, height), got = ?(frame.width, frame.height), "Forge answered another size");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_txt2img_answer_is_read_for_its_image_and_seed_only() {
        let answer: Txt2ImgAnswer = serde_json::from_str(
            r#"{"images":["aGk="],"parameters":{"x":[1,2]},"info":"{\"seed\": 42, \"all_seeds\": [42]}"}"#,
        )
        .unwrap();
        assert_eq!(
            answer
                .images
                .as_deref()
                .and_then(|i| i.first())
                .map(|i| i.as_ref()),
            Some("aGk=")
        );
        assert!(
            matches!(&answer.info, Some(InfoField::Text(info)) if serde_json::from_str::<InfoSeed>(info).unwrap().seed == Some(42))
        );
        // An `info` that is not a string is ignored, not a failure.
        let answer: Txt2ImgAnswer =
            serde_json::from_str(r#"{"images":["aGk="],"info":{"seed":1}}"#).unwrap();
        assert!(matches!(answer.info, Some(InfoField::Other(_))));
        // No images, or images that are not strings: not the expected answer.
        let answer: Txt2ImgAnswer = serde_json::from_str(r#"{"info":"x"}"#).unwrap();
        assert!(answer.images.is_none());
        assert!(serde_json::from_str::<Txt2ImgAnswer>(r#"{"images":[1]}"#).is_err());
        assert!(serde_json::from_str::<Txt2ImgAnswer>("<html>").is_err());
    }

    #[test]
    fn a_png_must_decode() {
        assert!(check_png(b"\x89PNG\r\n\x1a\nnot really", 8, 8).is_err());
        assert!(check_png(b"GIF89a", 8, 8).is_err());
    }
}
