//! Deterministic placeholder pictures: a small landscape (sky gradient, a sun, two rows of
//! hills) whose palette and shapes derive from a hash of the seed and the prompt.
//!
//! Everything is computed in coordinates relative to the picture size, so a 64x64 preview looks
//! like a shrunken copy of the full picture of the same seed and prompt.

/// Largest side [`render_png`] draws; larger requests are clamped so that a typo cannot ask
/// for gigabytes of pixels.
pub const MAX_SIDE: u32 = 4096;

/// Renders a PNG (RGB, 8 bits per channel) of exactly `width` x `height` pixels.
///
/// The same `(width, height, seed, prompt)` always gives the same bytes, so tests can compare
/// answers, and different seeds or prompts give visibly different pictures. Sides are clamped
/// to `1..=MAX_SIDE` (a PNG cannot be empty). Compression is `Fast`, because the simulator
/// answers benchmarks with zero latency and encoding dominates its cost.
pub fn render_png(width: u32, height: u32, seed: u64, prompt: &str) -> Vec<u8> {
    let width = width.clamp(1, MAX_SIDE);
    let height = height.clamp(1, MAX_SIDE);
    let pixels = render_rgb(width, height, seed, prompt);
    encode_rgb(width, height, &pixels)
}

/// FNV-1a over the seed and prompt: a hash that is stable across Rust releases (unlike
/// `DefaultHasher`), so pictures stay the same from build to build.
fn scene_hash(seed: u64, prompt: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.to_le_bytes().iter().chain(prompt.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// splitmix64: spreads one hash into as many well-mixed numbers as the scene needs.
struct Mixer(u64);

impl Mixer {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0.0..1.0`.
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn between(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.unit()
    }
}

type Rgb = [f32; 3];

fn hsv(hue: f32, saturation: f32, value: f32) -> Rgb {
    let hue = hue.rem_euclid(1.0) * 6.0;
    let sector = hue.floor();
    let fraction = hue - sector;
    let p = value * (1.0 - saturation);
    let q = value * (1.0 - saturation * fraction);
    let t = value * (1.0 - saturation * (1.0 - fraction));
    match sector as u32 {
        0 => [value, t, p],
        1 => [q, value, p],
        2 => [p, value, t],
        3 => [p, q, value],
        4 => [t, p, value],
        _ => [value, p, q],
    }
}

fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn to_bytes(colour: Rgb) -> [u8; 3] {
    colour.map(|c| (c.clamp(0.0, 1.0) * 255.0 + 0.5) as u8)
}

/// A row of hills: the sum of two sines, as a height (fraction of the picture) per column.
struct Ridge {
    base: f32,
    amplitude: [f32; 2],
    frequency: [f32; 2],
    phase: [f32; 2],
}

impl Ridge {
    fn random(mixer: &mut Mixer, base: f32) -> Ridge {
        Ridge {
            base,
            amplitude: [mixer.between(0.03, 0.08), mixer.between(0.01, 0.04)],
            frequency: [mixer.between(3.0, 7.0), mixer.between(9.0, 17.0)],
            phase: [mixer.between(0.0, 6.3), mixer.between(0.0, 6.3)],
        }
    }

    fn top(&self, x: f32) -> f32 {
        self.base
            + self.amplitude[0] * (x * self.frequency[0] + self.phase[0]).sin()
            + self.amplitude[1] * (x * self.frequency[1] + self.phase[1]).sin()
    }
}

fn render_rgb(width: u32, height: u32, seed: u64, prompt: &str) -> Vec<u8> {
    let mut mixer = Mixer(scene_hash(seed, prompt));
    let hue = mixer.unit();
    let sky_top = hsv(hue, mixer.between(0.5, 0.8), mixer.between(0.25, 0.45));
    let sky_horizon = hsv(
        hue + mixer.between(0.08, 0.2),
        mixer.between(0.3, 0.6),
        0.95,
    );
    let sun = hsv(hue + mixer.between(0.1, 0.2), mixer.between(0.2, 0.5), 1.0);
    let far_hill = hsv(hue + mixer.between(0.4, 0.6), mixer.between(0.3, 0.5), 0.55);
    let near_hill = hsv(
        hue + mixer.between(0.45, 0.65),
        mixer.between(0.5, 0.8),
        0.3,
    );
    let sun_x = mixer.between(0.2, 0.8);
    let sun_y = mixer.between(0.2, 0.45);
    let sun_radius = mixer.between(0.07, 0.13);
    let far_base = mixer.between(0.55, 0.65);
    let far = Ridge::random(&mut mixer, far_base);
    let near_base = mixer.between(0.72, 0.82);
    let near = Ridge::random(&mut mixer, near_base);

    let (w, h) = (width as f32, height as f32);
    // Distances are measured in units of the shorter side, so the sun stays round.
    let scale = w.min(h);
    // Per column, the first row of each hill; per depth below a ridge, its colour. The pixel
    // loop then only compares and copies, which keeps zero-latency answers cheap.
    let first_rows = |ridge: &Ridge| -> Vec<usize> {
        (0..width)
            .map(|x| {
                let top = ridge.top((x as f32 + 0.5) / w) * h;
                ((top - 0.5).floor() + 1.0).clamp(0.0, h) as usize
            })
            .collect()
    };
    let far_first = first_rows(&far);
    let near_first = first_rows(&near);
    let shade = |from: Rgb, to: Rgb, rate: f32| -> Vec<[u8; 3]> {
        (0..height)
            .map(|depth| to_bytes(mix(from, to, ((depth as f32 + 0.5) / h * rate).min(1.0))))
            .collect()
    };
    let near_shades = shade(near_hill, [0.02, 0.02, 0.05], 2.5);
    let far_shades = shade(far_hill, mix(far_hill, near_hill, 0.5), 3.0);
    let (sun_cx, sun_cy, sun_r) = (sun_x * w, sun_y * h, sun_radius * scale);
    let glow_r = sun_r * 1.8;

    let stride = width as usize * 3;
    let mut pixels = vec![0u8; stride * height as usize];
    for (y, row) in pixels.chunks_exact_mut(stride).enumerate() {
        let fy = y as f32 + 0.5;
        let sky_f = mix(sky_top, sky_horizon, (fy / h).powf(0.8));
        let sky = to_bytes(sky_f);
        let dy = fy - sun_cy;
        let near_sun_row = dy.abs() < glow_r;
        for (x, pixel) in row.chunks_exact_mut(3).enumerate() {
            let colour = if y >= near_first[x] {
                near_shades[y - near_first[x]]
            } else if y >= far_first[x] {
                far_shades[y - far_first[x]]
            } else if near_sun_row {
                let dx = x as f32 + 0.5 - sun_cx;
                let distance = (dx * dx + dy * dy).sqrt();
                if distance < sun_r {
                    to_bytes(sun)
                } else if distance < glow_r {
                    let t = 1.0 - (distance - sun_r) / (glow_r - sun_r);
                    to_bytes(mix(sky_f, sun, t * t * 0.6))
                } else {
                    sky
                }
            } else {
                sky
            };
            pixel.copy_from_slice(&colour);
        }
    }
    pixels
}

fn encode_rgb(width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pixels.len() / 4 + 1024);
    let result = (|| -> Result<(), png::EncodingError> {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        // Sub compresses these smooth rows as well as adaptive filtering, several times faster.
        encoder.set_filter(png::Filter::Sub);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(pixels)?;
        writer.finish()
    })();
    match result {
        Ok(()) => out,
        Err(err) => {
            // Unreachable with clamped sizes and a matching buffer; an empty answer is a
            // visible failure rather than a panic in the gateway.
            tracing::error!(%err, width, height, "PNG encoding failed");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (u32, u32, png::ColorType, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("valid PNG header");
        let size = reader.output_buffer_size().expect("buffer size");
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).expect("valid PNG data");
        buf.truncate(info.buffer_size());
        (info.width, info.height, info.color_type, buf)
    }

    #[test]
    fn the_picture_has_the_requested_size_and_is_rgb() {
        for (w, h) in [(512, 512), (768, 320), (64, 96), (1, 1), (3, 2000)] {
            let bytes = render_png(w, h, 42, "a lighthouse");
            let (dw, dh, colour, pixels) = decode(&bytes);
            assert_eq!((dw, dh), (w, h));
            assert_eq!(colour, png::ColorType::Rgb);
            assert_eq!(pixels.len(), (w * h * 3) as usize);
        }
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        assert_eq!(
            render_png(320, 200, 7, "cat"),
            render_png(320, 200, 7, "cat")
        );
    }

    #[test]
    fn seed_and_prompt_change_the_picture() {
        let base = render_png(128, 128, 7, "cat");
        assert_ne!(base, render_png(128, 128, 8, "cat"));
        assert_ne!(base, render_png(128, 128, 7, "dog"));
    }

    #[test]
    fn the_picture_is_not_flat() {
        let (_, _, _, pixels) = decode(&render_png(256, 256, 1, "hills"));
        let distinct: std::collections::HashSet<&[u8]> = pixels.chunks(3).collect();
        assert!(distinct.len() > 50, "only {} colours", distinct.len());
    }

    #[test]
    fn zero_and_huge_sides_are_clamped() {
        let (w, h, _, _) = decode(&render_png(0, 0, 0, ""));
        assert_eq!((w, h), (1, 1));
        let (w, h, _, _) = decode(&render_png(MAX_SIDE + 10, 1, 0, ""));
        assert_eq!((w, h), (MAX_SIDE, 1));
    }
}
