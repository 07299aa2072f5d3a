//! The pre-decoded cache: every sample of a dataset decoded once at the model size and stored in one binary file,
//! then memory-mapped, so that training skips JPEG decoding and resizing.
//!
//! File layout (integers little-endian):
//! - header, 48 bytes: magic `HSEGDATA`, version `u32`, size `u32`, count `u64`, ids length `u64`, ids hash `u64`,
//!   data hash `u64`;
//! - the ids, UTF-8, each followed by `\n`;
//! - per sample, in id order: `size*size*3` RGB bytes (HWC), then `size*size` label bytes (0 or 1).
//!
//! The file is written atomically (temporary file, then rename); opening checks the magic, version, length and
//! both hashes, so a truncated or corrupt cache is reported with its path instead of being read.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};
use memmap2::Mmap;
use rayon::prelude::*;

use super::decode::{check_size, decode_sample, Decoded};
use super::discover::Dataset;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// First bytes of every cache file.
pub const CACHE_MAGIC: [u8; 8] = *b"HSEGDATA";
/// Format version written and accepted.
pub const CACHE_VERSION: u32 = 1;

/// Samples decoded in parallel before being written out.
const CHUNK: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Header {
    magic: [u8; 8],
    version: u32,
    size: u32,
    count: u64,
    ids_len: u64,
    ids_hash: u64,
    data_hash: u64,
}

const HEADER_LEN: usize = std::mem::size_of::<Header>();

impl Header {
    /// Converts every integer between native and little-endian order (its own inverse).
    fn swap_le(self) -> Header {
        Header {
            magic: self.magic,
            version: self.version.to_le(),
            size: self.size.to_le(),
            count: self.count.to_le(),
            ids_len: self.ids_len.to_le(),
            ids_hash: self.ids_hash.to_le(),
            data_hash: self.data_hash.to_le(),
        }
    }
}

/// A memory-mapped pre-decoded cache.
///
/// The file must not be modified while it is open (the map would change under the reader); the cache only ever
/// replaces files by renaming, which leaves an open map intact.
pub struct Cache {
    path: PathBuf,
    map: Mmap,
    size: u32,
    ids: Vec<String>,
    data_offset: usize,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("path", &self.path).field("size", &self.size).field("count", &self.ids.len()).finish()
    }
}

impl Cache {
    /// Decodes every sample of `dataset` at `size x size` (in parallel) and writes the cache to `path`
    /// atomically, then opens it.
    pub fn build(dataset: &Dataset, size: u32, path: impl AsRef<Path>) -> Result<Cache> {
        let path = path.as_ref();
        check_size(size)?;
        let mut ids_blob = Vec::new();
        for s in dataset.samples() {
            if s.id.contains('\n') {
                return Err(Error::bad_file(&s.image_path, "a sample id containing a newline cannot be cached"));
            }
            ids_blob.extend_from_slice(s.id.as_bytes());
            ids_blob.push(b'\n');
        }
        let mut header = Header {
            magic: CACHE_MAGIC,
            version: CACHE_VERSION,
            size,
            count: dataset.len() as u64,
            ids_len: ids_blob.len() as u64,
            ids_hash: hash_of(&ids_blob),
            data_hash: 0,
        };
        // Decoding errors name the sample's file; they are carried out of the writer closure here.
        let mut decode_error = None;
        let written = write_atomic(path, |w| {
            w.write_all(bytemuck::bytes_of(&header.swap_le()))?;
            w.write_all(&ids_blob)?;
            let mut h = Hasher::new();
            for chunk in dataset.samples().chunks(CHUNK) {
                let decoded: Result<Vec<Decoded>> = chunk.par_iter().map(|s| decode_sample(s, size)).collect();
                let decoded = match decoded {
                    Ok(d) => d,
                    Err(e) => {
                        decode_error = Some(e);
                        return Err(std::io::Error::other("decoding failed"));
                    }
                };
                for d in &decoded {
                    h.update(&d.rgb);
                    h.update(&d.mask);
                    w.write_all(&d.rgb)?;
                    w.write_all(&d.mask)?;
                }
            }
            header.data_hash = h.finish();
            w.seek(SeekFrom::Start(0))?;
            w.write_all(bytemuck::bytes_of(&header.swap_le()))
        });
        if let Some(e) = decode_error {
            return Err(e);
        }
        written?;
        Cache::open(path)
    }

    /// Opens `path` if it is a valid cache of exactly `dataset`'s ids at `size`, else (re)builds it.
    pub fn open_or_build(dataset: &Dataset, size: u32, path: impl AsRef<Path>) -> Result<Cache> {
        let path = path.as_ref();
        if let Ok(cache) = Cache::open(path) {
            let same_ids = cache.ids.len() == dataset.len() && cache.ids.iter().zip(dataset.iter()).all(|(a, s)| *a == s.id);
            if cache.size == size && same_ids {
                return Ok(cache);
            }
        }
        Cache::build(dataset, size, path)
    }

    /// Maps a cache file and checks it whole; any defect is an error naming `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Cache> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and the cache writer never modifies a file in place (it renames a new one
        // over it); the type's docs ask users not to edit the file while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |msg: String| Error::bad_file(path, format!("corrupt cache: {msg}; delete it to rebuild"));
        if map.len() < HEADER_LEN {
            return Err(bad(format!("{} bytes is shorter than the {HEADER_LEN}-byte header", map.len())));
        }
        let header = bytemuck::pod_read_unaligned::<Header>(&map[..HEADER_LEN]).swap_le();
        if header.magic != CACHE_MAGIC {
            return Err(bad("not a hyperseg cache file (wrong magic)".into()));
        }
        if header.version != CACHE_VERSION {
            return Err(bad(format!("format version {} is not the supported {CACHE_VERSION}", header.version)));
        }
        if header.size == 0 || header.size > 16384 {
            return Err(bad(format!("implausible sample size {}", header.size)));
        }
        let per_sample = 4 * (header.size as u64).pow(2);
        let expected = (HEADER_LEN as u64)
            .checked_add(header.ids_len)
            .and_then(|n| n.checked_add(header.count.checked_mul(per_sample)?))
            .ok_or_else(|| bad("header sizes overflow".into()))?;
        if map.len() as u64 != expected {
            return Err(bad(format!("file is {} bytes but its header describes {expected} (truncated?)", map.len())));
        }
        let data_offset = HEADER_LEN + header.ids_len as usize;
        let ids_blob = &map[HEADER_LEN..data_offset];
        if hash_of(ids_blob) != header.ids_hash {
            return Err(bad("id list checksum mismatch".into()));
        }
        if hash_of(&map[data_offset..]) != header.data_hash {
            return Err(bad("pixel data checksum mismatch".into()));
        }
        let ids_text = std::str::from_utf8(ids_blob).map_err(|_| bad("ids are not UTF-8".into()))?;
        let ids: Vec<String> = ids_text.split_terminator('\n').map(str::to_string).collect();
        if ids.len() as u64 != header.count {
            return Err(bad(format!("{} ids for {} samples", ids.len(), header.count)));
        }
        Ok(Cache { path: path.to_path_buf(), map, size: header.size, ids, data_offset })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Side of the stored squares.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the cache holds no sample.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Sample ids, in stored order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The RGB bytes (HWC) and labels of sample `index`, borrowed from the map.
    pub fn view(&self, index: usize) -> Result<(&[u8], &[u8])> {
        if index >= self.len() {
            return Err(Error::InvalidValue { name: "index", msg: format!("{index} is past the cache's {} samples", self.len()) });
        }
        let n = (self.size as usize).pow(2);
        let start = self.data_offset + index * 4 * n;
        Ok((&self.map[start..start + 3 * n], &self.map[start + 3 * n..start + 4 * n]))
    }

    /// Sample `index` as an owned [`Decoded`].
    pub fn get(&self, index: usize) -> Result<Decoded> {
        let (rgb, mask) = self.view(index)?;
        Ok(Decoded { size: self.size, rgb: rgb.to_vec(), mask: mask.to_vec() })
    }
}

/// A fast streaming 64-bit hash over 8-byte words (not cryptographic; it detects corruption). Feeding the
/// same bytes in any split gives the same result.
#[derive(Clone, Copy)]
struct Hasher {
    state: u64,
    len: u64,
    pending: [u8; 8],
    npending: usize,
}

impl Hasher {
    fn new() -> Hasher {
        Hasher { state: 0x243F_6A88_85A3_08D3, len: 0, pending: [0; 8], npending: 0 }
    }

    fn word(&mut self, v: u64) {
        self.state = (self.state ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }

    fn update(&mut self, mut bytes: &[u8]) {
        self.len = self.len.wrapping_add(bytes.len() as u64);
        if self.npending > 0 {
            let take = (8 - self.npending).min(bytes.len());
            self.pending[self.npending..self.npending + take].copy_from_slice(&bytes[..take]);
            self.npending += take;
            bytes = &bytes[take..];
            if self.npending < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.pending));
            self.npending = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().expect("8-byte chunk")));
        }
        let rest = words.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    fn finish(mut self) -> u64 {
        if self.npending > 0 {
            let mut last = [0u8; 8];
            last[..self.npending].copy_from_slice(&self.pending[..self.npending]);
            self.word(u64::from_le_bytes(last));
        }
        let mut z = self.state ^ self.len;
        z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        z ^ (z >> 33)
    }
}

/// The hash of `bytes` in one go.
fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = Hasher::new();
    h.update(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_ignores_how_data_is_split() {
        let data: Vec<u8> = (0..103u32).map(|i| (i * 37 % 251) as u8).collect();
        let whole = hash_of(&data);
        for cut in [0, 1, 5, 8, 13, 64, 102, 103] {
            let mut h = Hasher::new();
            h.update(&data[..cut]);
            h.update(&data[cut..]);
            assert_eq!(h.finish(), whole, "cut at {cut}");
        }
        assert_ne!(hash_of(&data[..102]), whole);
        assert_eq!(HEADER_LEN, 48);
    }
}
