//! Finding the images of a folder: recursive, any common format, every bad file skipped
//! with a reason the user can read.

use std::collections::HashSet;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use image::{ImageReader, Limits};

use super::IndexError;
use crate::model::image_io::{MAX_ALLOC, MAX_SIDE};

pub use crate::model::image_io::IMAGE_EXTENSIONS;

/// Extensions of image formats a user would expect in a gallery that this build cannot
/// decode, with the format's name: such files are listed as skipped, never ignored.
pub const UNSUPPORTED_IMAGE_EXTENSIONS: [(&str, &str); 30] = [
    ("heic", "HEIC (HEIF, phone photos)"),
    ("heif", "HEIF"),
    ("hif", "HEIF"),
    ("avif", "AVIF"),
    ("jxl", "JPEG XL"),
    ("jp2", "JPEG 2000"),
    ("j2k", "JPEG 2000"),
    ("jpf", "JPEG 2000"),
    ("psd", "Photoshop PSD"),
    ("svg", "SVG (a vector drawing)"),
    ("dng", "camera RAW (DNG)"),
    ("cr2", "camera RAW (Canon CR2)"),
    ("cr3", "camera RAW (Canon CR3)"),
    ("crw", "camera RAW (Canon CRW)"),
    ("nef", "camera RAW (Nikon NEF)"),
    ("nrw", "camera RAW (Nikon NRW)"),
    ("arw", "camera RAW (Sony ARW)"),
    ("srf", "camera RAW (Sony SRF)"),
    ("sr2", "camera RAW (Sony SR2)"),
    ("orf", "camera RAW (Olympus ORF)"),
    ("rw2", "camera RAW (Panasonic RW2)"),
    ("raf", "camera RAW (Fujifilm RAF)"),
    ("pef", "camera RAW (Pentax PEF)"),
    ("srw", "camera RAW (Samsung SRW)"),
    ("x3f", "camera RAW (Sigma X3F)"),
    ("3fr", "camera RAW (Hasselblad 3FR)"),
    ("iiq", "camera RAW (Phase One IIQ)"),
    ("erf", "camera RAW (Epson ERF)"),
    ("kdc", "camera RAW (Kodak KDC)"),
    ("mrw", "camera RAW (Minolta MRW)"),
];

/// The reason a file of an image format this build cannot decode is skipped.
fn unsupported_reason(format: &str) -> String {
    format!(
        "{format} image: this build cannot decode that format; convert it to JPEG or PNG \
         to index it"
    )
}

/// The name of an unsupported image format recognised from a file's extension.
fn unsupported_by_extension(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    UNSUPPORTED_IMAGE_EXTENSIONS
        .iter()
        .find(|(e, _)| *e == ext)
        .map(|(_, name)| *name)
}

/// The name of an unsupported image format recognised from a file's first bytes (a HEIC
/// photo saved as `.jpg` by a phone app, say): ISO-BMFF brands of HEIF/AVIF, the JPEG XL
/// and JPEG 2000 signatures, Photoshop's.
fn unsupported_by_content(bytes: &[u8]) -> Option<&'static str> {
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return match &bytes[8..12] {
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" => {
                Some("HEIC (HEIF, phone photos)")
            }
            b"mif1" | b"msf1" => Some("HEIF"),
            b"avif" | b"avis" => Some("AVIF"),
            b"crx " => Some("camera RAW (Canon CR3)"),
            _ => None,
        };
    }
    if bytes.starts_with(&[0xFF, 0x0A]) || bytes.starts_with(b"\0\0\0\x0CJXL \r\n\x87\n") {
        return Some("JPEG XL");
    }
    if bytes.starts_with(b"\0\0\0\x0CjP  \r\n\x87\n")
        || bytes.starts_with(&[0xFF, 0x4F, 0xFF, 0x51])
    {
        return Some("JPEG 2000");
    }
    if bytes.starts_with(b"8BPS") {
        return Some("Photoshop PSD");
    }
    None
}

/// Files larger than this are skipped unread.
pub const MAX_FILE_BYTES: u64 = 512 << 20;

/// One image of a gallery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GalleryItem {
    /// The image file.
    pub path: PathBuf,
    /// blake3 of the file's bytes (hex): the cache key, so renamed or copied files are
    /// not embedded again and edited ones are.
    pub content_hash: String,
    /// Width in pixels, from the file's header.
    pub width: u32,
    /// Height in pixels, from the file's header.
    pub height: u32,
}

/// A file that was not indexed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped or failed, for the user (unreadable, too large, not
    /// decodable, …).
    pub reason: String,
}

/// The images found under a folder, in path order.
#[derive(Debug, Clone, Default)]
pub struct Gallery {
    /// The folder that was scanned.
    pub root: PathBuf,
    /// The images that passed the scan, in path order.
    pub items: Vec<GalleryItem>,
    /// The image-named files that did not (files of image formats this build cannot
    /// decode among them, with the format named), with reasons, in path order.
    pub skipped: Vec<Skipped>,
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Walks `root` recursively (following symbolic links, each folder once, so link loops
/// end) and checks every image-named file: readable, of sane size, a decodable header
/// within the decoding limits. The pixels are decoded later, when embedding.
pub fn scan_gallery(
    root: &Path,
    cancel: &dyn Fn() -> bool,
    progress: &mut dyn FnMut(usize),
) -> Result<Gallery, IndexError> {
    let meta = std::fs::metadata(root).map_err(|e| IndexError::io(root, e))?;
    if !meta.is_dir() {
        return Err(IndexError::NotAFolder(root.to_path_buf()));
    }
    let mut gallery = Gallery {
        root: root.to_path_buf(),
        ..Gallery::default()
    };
    let mut seen_dirs = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    let mut files = Vec::new();
    while let Some(dir) = stack.pop() {
        if cancel() {
            return Err(IndexError::Cancelled);
        }
        let canonical = match std::fs::canonicalize(&dir) {
            Ok(c) => c,
            Err(e) => {
                gallery.skipped.push(Skipped {
                    path: dir.clone(),
                    reason: format!("cannot resolve folder: {e}"),
                });
                continue;
            }
        };
        if !seen_dirs.insert(canonical) {
            continue; // a link back to a folder already walked
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                gallery.skipped.push(Skipped {
                    path: dir.clone(),
                    reason: format!("cannot list folder: {e}"),
                });
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Hidden entries (our own cache folder among them) are not gallery content.
            if entry.file_name().as_encoded_bytes().first() == Some(&b'.') {
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) if m.is_file() => {
                    if has_image_extension(&path) {
                        files.push((path, m.len()));
                    } else if let Some(format) = unsupported_by_extension(&path) {
                        gallery.skipped.push(Skipped {
                            path,
                            reason: unsupported_reason(format),
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if has_image_extension(&path) || path.is_symlink() {
                        gallery.skipped.push(Skipped {
                            path,
                            reason: format!("cannot read: {e}"),
                        });
                    }
                }
            }
        }
    }
    files.sort();
    for (n, (path, len)) in files.into_iter().enumerate() {
        if cancel() {
            return Err(IndexError::Cancelled);
        }
        match check_image(&path, len) {
            Ok(item) => gallery.items.push(item),
            Err(reason) => gallery.skipped.push(Skipped { path, reason }),
        }
        progress(n + 1);
    }
    gallery.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(gallery)
}

/// Hashes a file and reads its image header; the error is the reason to skip it.
fn check_image(path: &Path, len: u64) -> Result<GalleryItem, String> {
    if len == 0 {
        return Err("empty file (0 bytes)".into());
    }
    if len > MAX_FILE_BYTES {
        return Err(format!(
            "file too large ({} MiB, limit {} MiB)",
            len >> 20,
            MAX_FILE_BYTES >> 20
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    std::fs::File::open(path)
        .and_then(|f| BufReader::new(f).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {e}"))?;
    let content_hash = blake3::hash(&bytes).to_hex().to_string();
    let mut reader = ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    crate::model::image_io::format_from_extension(&mut reader, path);
    let Some(format) = reader.format() else {
        return Err(match unsupported_by_content(&bytes) {
            Some(format) => unsupported_reason(format),
            None => "not an image (unknown format)".into(),
        });
    };
    // JPEG decoders fill a cut-off scan with grey instead of failing, so check for the
    // end-of-image marker (padding after it is allowed).
    if format == image::ImageFormat::Jpeg {
        let end = bytes
            .iter()
            .rposition(|&b| b != 0 && b != b'\n' && b != b'\r')
            .unwrap_or(0);
        if end < 1 || bytes[end - 1] != 0xFF || bytes[end] != 0xD9 {
            return Err("truncated JPEG (no end-of-image marker)".into());
        }
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| format!("cannot decode image header: {e}"))?;
    if width == 0 || height == 0 {
        return Err("the image has no pixels".into());
    }
    Ok(GalleryItem {
        path: path.to_path_buf(),
        content_hash,
        width,
        height,
    })
}

/// A thumbnail whose longer side is `max_side` (never upscaled).
pub fn thumbnail(image: &image::RgbImage, max_side: u32) -> image::RgbImage {
    let (w, h) = image.dimensions();
    let longest = w.max(h).max(1);
    if longest <= max_side {
        return image.clone();
    }
    let scale = max_side as f64 / longest as f64;
    let tw = ((w as f64 * scale).round() as u32).max(1);
    let th = ((h as f64 * scale).round() as u32).max(1);
    image::imageops::thumbnail(image, tw, th)
}
