//! Reading input images: the format from the content (not the name), complete files only, the
//! EXIF orientation applied, and a pixel limit checked from the header before anything is
//! decoded.

use std::io::Cursor;

use anyhow::{Result, anyhow, bail};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

/// The formats `upscale` reads, for messages.
pub const FORMATS: &str = "PNG, JPEG, WebP and BMP";

/// File name extensions a folder walk picks up.
pub const EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "jfif", "webp", "bmp"];

/// A decoded input image, packed 8-bit RGB or RGBA as the engine takes it.
pub struct Pixels {
    /// Packed pixels.
    pub data: Vec<u8>,
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// `Rgb8`, or `Rgba8` when the image has alpha.
    pub format: pgp_core::PixelFormat,
}

impl Pixels {
    /// The engine's view of the pixels.
    pub fn view(&self) -> pgp_core::Result<pgp_core::ImageView<'_>> {
        pgp_core::ImageView::packed(&self.data, self.width, self.height, self.format)
    }
}

/// Reads and decodes an image file for upscaling by `scale` ([`decode`]).
pub fn load(path: &std::path::Path, scale: u64, max_pixels: u64) -> Result<Pixels> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("cannot read the file: {e}"))?;
    let decoded = decode(&bytes, scale, max_pixels)?;
    drop(bytes);
    let (width, height) = (decoded.width() as usize, decoded.height() as usize);
    let (data, format) = if decoded.color().has_alpha() {
        (decoded.to_rgba8().into_raw(), pgp_core::PixelFormat::Rgba8)
    } else {
        (decoded.to_rgb8().into_raw(), pgp_core::PixelFormat::Rgb8)
    };
    Ok(Pixels {
        data,
        width,
        height,
        format,
    })
}

/// Whether a path's extension is one a folder walk picks up ([`EXTENSIONS`]).
pub fn is_image(p: &std::path::Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Decodes an image file's bytes for upscaling by `scale`. Refuses files that are not a
/// supported image, JPEGs cut short (decoders fill the missing part with grey without a word),
/// and images whose output would exceed `max_pixels` pixels — from the header, before
/// decoding. The EXIF orientation is applied, as image viewers do.
pub fn decode(bytes: &[u8], scale: u64, max_pixels: u64) -> Result<DynamicImage> {
    // image's errors repeat their source in their own text: shown once, without the chain.
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| anyhow!("reading the image: {e}"))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Bmp)) => {
            f
        }
        Some(f) => bail!(
            "a {} image: pgp-wgpu reads {FORMATS}",
            f.extensions_str()
                .first()
                .unwrap_or(&"unknown")
                .to_uppercase()
        ),
        None => bail!("not an image file (pgp-wgpu reads {FORMATS})"),
    };
    if format == ImageFormat::Jpeg {
        jpeg_complete(bytes)?;
    }
    let mut limits = image::Limits::default();
    // Room for the largest allowed image at 16 bits per channel with alpha.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(512 << 20));
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| anyhow!("reading the image header: {e}"))?;
    let (mut w, mut h) = decoder.dimensions();
    if w == 0 || h == 0 {
        bail!("the image is empty ({w}×{h})");
    }
    use image::metadata::Orientation::*;
    let orientation = decoder.orientation().unwrap_or(NoTransforms);
    if matches!(
        orientation,
        Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH
    ) {
        (w, h) = (h, w);
    }
    let (ow, oh) = (u64::from(w) * scale, u64::from(h) * scale);
    check_pixels(ow * oh, max_pixels, &format!("the output ({ow}×{oh})"))?;
    let mut image =
        DynamicImage::from_decoder(decoder).map_err(|e| anyhow!("decoding the image: {e}"))?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Refuses more than `max_pixels` pixels, naming the limit's flag.
pub fn check_pixels(pixels: u64, max_pixels: u64, what: &str) -> Result<()> {
    let mp = |p: u64| {
        let m = p as f64 / 1e6;
        if m >= 1.0 {
            format!("{m:.1}")
        } else {
            format!("{m:.4}")
        }
    };
    if pixels > max_pixels {
        bail!(
            "{what} would be {} megapixels, over the limit of {} (raise it with \
             --max-megapixels)",
            mp(pixels),
            mp(max_pixels)
        );
    }
    Ok(())
}

/// Checks that a JPEG runs to its end-of-image marker: walks the marker segments by their
/// lengths and the entropy-coded data of each scan (where `FF` is always followed by `00` or a
/// restart marker), so an `FF D9` inside an EXIF thumbnail does not count.
pub fn jpeg_complete(bytes: &[u8]) -> Result<()> {
    let truncated = || {
        anyhow::anyhow!(
            "the JPEG is truncated (it ends before its end-of-image marker): the file is \
             incomplete, re-download or re-export it"
        )
    };
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        bail!("not a JPEG file (no start-of-image marker)");
    }
    let mut pos = 2;
    loop {
        // A marker: FF (fill FFs allowed), then its code.
        if *bytes.get(pos).ok_or_else(truncated)? != 0xFF {
            bail!("the JPEG is corrupt: no marker at byte {pos}");
        }
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let code = *bytes.get(pos).ok_or_else(truncated)?;
        pos += 1;
        match code {
            0xD9 => return Ok(()),
            // Markers without a length: restarts, TEM.
            0xD0..=0xD7 | 0x01 => {}
            _ => {
                let len = bytes.get(pos..pos + 2).ok_or_else(truncated)?;
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                if len < 2 {
                    bail!("the JPEG is corrupt: a segment of length {len} at byte {pos}");
                }
                pos += len;
                if pos > bytes.len() {
                    return Err(truncated());
                }
                if code == 0xDA {
                    // Entropy-coded data up to the next marker that is not a restart.
                    loop {
                        match bytes.get(pos..pos + 2).ok_or_else(truncated)? {
                            [0xFF, 0x00 | 0xD0..=0xD7] => pos += 2,
                            [0xFF, 0xFF] => pos += 1,
                            [0xFF, _] => break,
                            _ => pos += 1,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img)
            .write_to(&mut out, ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn jpeg_must_be_complete() {
        let full = jpeg(40, 24);
        jpeg_complete(&full).unwrap();
        for cut in [3, full.len() / 3, full.len() * 6 / 10, full.len() - 1] {
            let err = decode(&full[..cut], 1, 1 << 30).unwrap_err().to_string();
            assert!(err.contains("truncated"), "cut at {cut}: {err}");
        }
        // Bytes after the end marker are harmless.
        let mut padded = full.clone();
        padded.extend_from_slice(b"trailing");
        assert_eq!(decode(&padded, 1, 1 << 30).unwrap().width(), 40);
    }

    #[test]
    fn format_from_content_and_limits() {
        let bytes = jpeg(40, 24);
        assert_eq!(decode(&bytes, 1, 1 << 30).unwrap().height(), 24);
        let err = decode(&bytes, 4, 10_000).unwrap_err().to_string();
        assert!(err.contains("over the limit"), "{err}");
        let err = decode(b"GIF89a....", 1, 1 << 30).unwrap_err().to_string();
        assert!(err.contains("a GIF image"), "{err}");
        let err = decode(b"hello", 1, 1 << 30).unwrap_err().to_string();
        assert!(err.contains("not an image file"), "{err}");
    }

    #[test]
    fn other_formats_cut_short_are_errors_too() {
        let img = image::RgbImage::from_fn(40, 24, |x, y| {
            image::Rgb([
                (x * 37 % 256) as u8,
                (y * 91 % 256) as u8,
                ((x * y) % 256) as u8,
            ])
        });
        for format in [ImageFormat::Png, ImageFormat::WebP, ImageFormat::Bmp] {
            let mut out = Cursor::new(Vec::new());
            DynamicImage::ImageRgb8(img.clone())
                .write_to(&mut out, format)
                .unwrap();
            let full = out.into_inner();
            assert!(decode(&full, 1, 1 << 30).is_ok(), "{format:?}");
            // Cut inside the pixel data (a PNG missing only its end chunk is complete).
            for cut in [full.len() / 2, full.len() * 6 / 10] {
                assert!(
                    decode(&full[..cut], 1, 1 << 30).is_err(),
                    "{format:?} cut at {cut} of {} decoded",
                    full.len()
                );
            }
        }
    }
}
