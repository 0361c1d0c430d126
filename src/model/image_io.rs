//! Decoding any image a user points at into 8-bit RGB, the way the model processors expect:
//! EXIF orientation applied, grayscale expanded, alpha composited over white, 16-bit
//! reduced to 8-bit. Decoding limits keep a hostile header (50,000 × 50,000 pixels) from
//! exhausting memory. JPEGs (YCbCr, RGB or grey) are decoded with libjpeg-turbo's code
//! (through `mozjpeg`) with its defaults, as PIL and torchvision decode them, so a photo
//! gives the Python reference's pixels exactly; CMYK JPEGs and every other format go
//! through the `image` crate.

use std::io::Cursor;
use std::path::Path;

/// File name extensions of the formats this build decodes (case-insensitive): the `image`
/// crate's default formats. Galleries and caption datasets look at these files.
pub const IMAGE_EXTENSIONS: [&str; 21] = [
    "jpg", "jpeg", "jfif", "jpe", "png", "webp", "bmp", "gif", "tif", "tiff", "tga", "ico", "pnm",
    "ppm", "pgm", "pbm", "pam", "qoi", "hdr", "exr", "dds",
];

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage, RgbaImage};

use super::error::{ModelError, Result};

/// Largest width or height accepted.
pub const MAX_SIDE: u32 = 16_384;
/// Largest decoded allocation accepted (bytes).
pub const MAX_ALLOC: u64 = 1 << 30;

fn image_error(path: &Path, reason: impl ToString) -> ModelError {
    ModelError::Image {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Sets `reader`'s format from `path`'s extension when the content named none and the
/// extension is of a format without a signature (TGA): every other format is recognised
/// from its bytes, so a text file named `.jpg` stays "not an image".
pub fn format_from_extension<R: std::io::BufRead + std::io::Seek>(
    reader: &mut ImageReader<R>,
    path: &Path,
) {
    if reader.format().is_none()
        && let Ok(format @ image::ImageFormat::Tga) = image::ImageFormat::from_path(path)
    {
        reader.set_format(format);
    }
}

/// Opens and decodes an image file with EXIF orientation applied.
pub fn open_image(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let mut reader = ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| ModelError::io(path, e))?;
    format_from_extension(&mut reader, path);
    let Some(format) = reader.format() else {
        return Err(image_error(path, "not a known image format"));
    };
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| image_error(path, e))?;
    let orientation = decoder.orientation().map_err(|e| image_error(path, e))?;
    let jpeg = if format == image::ImageFormat::Jpeg {
        decode_jpeg(&bytes).map_err(|e| image_error(path, e))?
    } else {
        None
    };
    let mut image = match jpeg {
        Some(rgb) => DynamicImage::ImageRgb8(rgb),
        None => DynamicImage::from_decoder(decoder).map_err(|e| image_error(path, e))?,
    };
    image.apply_orientation(orientation);
    if image.width() == 0 || image.height() == 0 {
        return Err(image_error(path, "the image has no pixels"));
    }
    Ok(image)
}

/// Decodes a JPEG as libjpeg-turbo does with its defaults (islow IDCT, fancy upsampling),
/// which is what PIL and torchvision do: `Ok(None)` for a colour space it does not turn
/// into RGB (CMYK, YCCK), left to the `image` crate. The header is checked against
/// [`MAX_SIDE`] and [`MAX_ALLOC`] before any pixel is decoded.
///
/// # Errors
/// The library's message for a corrupt stream (its fatal errors unwind and are caught here;
/// they never reach the panic hook).
pub fn decode_jpeg(bytes: &[u8]) -> std::result::Result<Option<RgbImage>, String> {
    use mozjpeg::ColorSpace;
    let run = || -> std::io::Result<Option<RgbImage>> {
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        if !matches!(
            d.color_space(),
            ColorSpace::JCS_YCbCr | ColorSpace::JCS_RGB | ColorSpace::JCS_GRAYSCALE
        ) {
            return Ok(None);
        }
        let (w, h) = (d.width(), d.height());
        let too_big = w > MAX_SIDE as usize
            || h > MAX_SIDE as usize
            || (w as u64) * (h as u64) * 3 > MAX_ALLOC;
        if too_big || w == 0 || h == 0 {
            return Err(std::io::Error::other(format!(
                "{w}×{h} pixels is outside the decoding limits"
            )));
        }
        let mut started = d.rgb()?;
        let data: Vec<u8> = started.read_scanlines()?;
        started.finish()?;
        RgbImage::from_raw(w as u32, h as u32, data)
            .map(Some)
            .ok_or_else(|| std::io::Error::other("the JPEG decoded to fewer pixels than its size"))
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(payload) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "the JPEG could not be decoded".into())),
    }
}

/// 8-bit RGB: grayscale is replicated, alpha is composited over a white background (as
/// transformers' `convert_to_rgb` does), 16-bit and float channels are scaled to 8 bits.
pub fn to_rgb8(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba: RgbaImage = image.to_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (src, dst) in rgba.pixels().zip(out.pixels_mut()) {
        let a = src[3] as u32;
        for c in 0..3 {
            // Integer "over" with rounding, like PIL's alpha_composite onto opaque white.
            let v = src[c] as u32 * a + 255 * (255 - a);
            dst[c] = ((v + 127) / 255) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_jpeg_is_an_error_not_a_crash() {
        // A start-of-image marker, then garbage: libjpeg's fatal error comes back as Err.
        let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x02];
        bytes.extend((0..200u32).map(|i| (i * 37 % 251) as u8));
        let err = decode_jpeg(&bytes).unwrap_err();
        assert!(!err.is_empty());
        // A valid JPEG decodes; a header claiming more than the limits is refused unread.
        let mut ok = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::from_pixel(9, 5, image::Rgb([200, 30, 90])))
            .write_to(&mut Cursor::new(&mut ok), image::ImageFormat::Jpeg)
            .unwrap();
        let img = decode_jpeg(&ok).unwrap().unwrap();
        assert_eq!(img.dimensions(), (9, 5));
        let sof = ok.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        // SOF0: length (2), precision (1), height (2), width (2).
        ok[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
        ok[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
        let err = decode_jpeg(&ok).unwrap_err();
        assert!(err.contains("outside the decoding limits"), "{err}");
    }
    use image::{GrayImage, Luma, Rgba};

    #[test]
    fn alpha_is_composited_over_white_and_gray_is_replicated() {
        let mut rgba = RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, Rgba([200, 100, 0, 255]));
        let rgb = to_rgb8(&DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [200, 100, 0]);
        let gray = GrayImage::from_pixel(1, 1, Luma([77]));
        assert_eq!(
            to_rgb8(&DynamicImage::ImageLuma8(gray)).get_pixel(0, 0).0,
            [77, 77, 77]
        );
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("agff-image-io-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn exif_orientation_is_applied() {
        use image::ImageEncoder;
        // 3×2 image, red at the top-left; EXIF orientation 6 (rotate 90° clockwise).
        let mut img = RgbImage::from_pixel(3, 2, image::Rgb([0, 0, 255]));
        img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        let exif: Vec<u8> = vec![
            0x4d, 0x4d, 0x00, 0x2a, 0, 0, 0, 8, // big-endian TIFF header, IFD at 8
            0, 1, // one entry
            0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, // Orientation = 6
            0, 0, 0, 0, // no next IFD
        ];
        let path = scratch("rotated.png");
        let file = std::fs::File::create(&path).unwrap();
        let mut enc = image::codecs::png::PngEncoder::new(file);
        enc.set_exif_metadata(exif).unwrap();
        enc.write_image(img.as_raw(), 3, 2, image::ExtendedColorType::Rgb8)
            .unwrap();
        let decoded = to_rgb8(&open_image(&path).unwrap());
        assert_eq!(decoded.dimensions(), (2, 3));
        assert_eq!(decoded.get_pixel(1, 0).0, [255, 0, 0]);
        std::fs::remove_dir_all(path.parent().unwrap()).ok();
    }

    #[test]
    fn sixteen_bit_images_are_scaled_not_clipped() {
        let img = image::ImageBuffer::<Luma<u16>, Vec<u16>>::from_fn(2, 1, |x, _| {
            Luma([if x == 0 { 65535 } else { 32896 }])
        });
        let path = scratch("deep.png");
        img.save(&path).unwrap();
        let rgb = to_rgb8(&open_image(&path).unwrap());
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [128, 128, 128]);
        std::fs::remove_dir_all(path.parent().unwrap()).ok();
    }

    #[test]
    fn undecodable_files_name_the_problem() {
        let dir = std::env::temp_dir().join(format!("agff-image-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("notes.jpg");
        std::fs::write(&text, b"this is not an image").unwrap();
        let err = open_image(&text).unwrap_err().to_string();
        assert!(err.contains("notes.jpg"), "{err}");
        let missing = dir.join("missing.png");
        assert!(
            open_image(&missing)
                .unwrap_err()
                .to_string()
                .contains("missing.png")
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
