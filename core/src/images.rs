//! The image directory: protobuf messages behind a small versioned header.
//!
//! Every image file starts with a 32-byte [`Header`]: magic, format version,
//! kind, payload length and CRC32 of the payload. Raw page files pad the
//! header to one page so page contents stay page-aligned.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;

/// Generated protobuf messages (see `core/proto/crt.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/crt.images.rs"));
}

/// Serializes bytes as a lowercase hex string (for `crt show`).
pub fn hex<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(out, "{x:02x}");
    }
    s.serialize_str(&out)
}

/// Magic bytes at the start of every image file.
pub const MAGIC: [u8; 8] = *b"CRT\0IMG\0";
/// Version of the image format written by this crt.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the header in front of every image file.
pub const HEADER_LEN: usize = 32;
/// Page size of page files (x86_64).
pub const PAGE_SIZE: u64 = 4096;

/// What an image file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// `inventory.img`
    Inventory = 1,
    /// `task-<pid>.img`
    Task = 2,
    /// `pagemap-<pid>.img`
    PageMap = 3,
    /// `pages-<pid>.img` (raw pages)
    Pages = 4,
    /// `blobs.img` (plugin data by key)
    Blobs = 5,
    /// `ipc.img` (SysV message queues and semaphore sets)
    Ipc = 6,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Inventory,
            2 => Self::Task,
            3 => Self::PageMap,
            4 => Self::Pages,
            5 => Self::Blobs,
            6 => Self::Ipc,
            _ => return None,
        })
    }
}

/// Errors reading or writing images. Each names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// I/O on an image file failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not start with crt's magic.
    #[error("{path}: not a crt image (bad magic)")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// Written by an incompatible crt.
    #[error("{path}: image format version {found}, this crt reads version {FORMAT_VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Version found in the header.
        found: u32,
    },
    /// The header says another kind of image.
    #[error("{path}: expected a {expected:?} image, header says kind {found}")]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// What we wanted.
        expected: Kind,
        /// What the header says.
        found: u32,
    },
    /// Shorter than the header says.
    #[error("{path}: truncated: header announces {expected} bytes of payload, file has {found}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Announced length.
        expected: u64,
        /// Present length.
        found: u64,
    },
    /// Checksum mismatch.
    #[error("{path}: corrupt: payload checksum {found:#010x}, header says {expected:#010x}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Checksum in the header.
        expected: u32,
        /// Checksum of the payload.
        found: u32,
    },
    /// The payload does not decode.
    #[error("{path}: corrupt")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's complaint.
        source: prost::DecodeError,
    },
    /// The content is inconsistent.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

impl ImageError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }
}

/// The 32-byte header in front of each image file.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// What follows.
    pub kind: Kind,
    /// Bytes of payload after the header (after the padding for pages).
    pub payload_len: u64,
    /// CRC32 of the payload (0 for page files).
    pub crc: u32,
}

impl Header {
    /// Encodes to bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(self.kind as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.payload_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// Decodes and validates a header read from `path`.
    pub fn decode(path: &Path, b: &[u8], expected: Kind) -> Result<Self, ImageError> {
        if b.len() < HEADER_LEN || b[..8] != MAGIC {
            return Err(ImageError::BadMagic { path: path.to_path_buf() });
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(ImageError::Version { path: path.to_path_buf(), found: version });
        }
        let kind_raw = u32_at(12);
        let kind = Kind::from_u32(kind_raw).filter(|k| *k == expected).ok_or(ImageError::WrongKind {
            path: path.to_path_buf(),
            expected,
            found: kind_raw,
        })?;
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[16..24]);
        Ok(Self { kind, payload_len: u64::from_le_bytes(len), crc: u32_at(24) })
    }
}

/// An image directory.
#[derive(Debug, Clone)]
pub struct ImageDir {
    dir: PathBuf,
}

impl ImageDir {
    /// Refers to `dir` (which may not exist yet).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Path of `inventory.img`.
    pub fn inventory_path(&self) -> PathBuf {
        self.dir.join("inventory.img")
    }

    /// Path of `blobs.img`.
    pub fn blobs_path(&self) -> PathBuf {
        self.dir.join("blobs.img")
    }

    /// Path of `ipc.img`.
    pub fn ipc_path(&self) -> PathBuf {
        self.dir.join("ipc.img")
    }

    /// The SysV message queues and semaphore sets, if the image has any.
    pub fn read_ipc(&self) -> Result<pb::SysvIpc, ImageError> {
        let path = self.ipc_path();
        if !path.exists() {
            return Ok(pb::SysvIpc::default());
        }
        self.read_msg(&path, Kind::Ipc)
    }

    /// Plugin blobs, if the image has any.
    pub fn read_blobs(&self) -> Result<pb::Blobs, ImageError> {
        let path = self.blobs_path();
        if !path.exists() {
            return Ok(pb::Blobs::default());
        }
        self.read_msg(&path, Kind::Blobs)
    }

    /// Path of `task-<pid>.img`.
    pub fn task_path(&self, pid: i32) -> PathBuf {
        self.dir.join(format!("task-{pid}.img"))
    }

    /// Path of `pagemap-<pid>.img`.
    pub fn pagemap_path(&self, pid: i32) -> PathBuf {
        self.dir.join(format!("pagemap-{pid}.img"))
    }

    /// Path of page shard `shard` of `pid`: `pages-<pid>.img`, then `pages-<pid>.<shard>.img`.
    pub fn pages_path(&self, pid: i32, shard: usize) -> PathBuf {
        match shard {
            0 => self.dir.join(format!("pages-{pid}.img")),
            k => self.dir.join(format!("pages-{pid}.{k}.img")),
        }
    }

    /// Writes one message atomically (temp file + rename).
    pub fn write_msg<M: Message>(&self, path: &Path, kind: Kind, msg: &M) -> Result<(), ImageError> {
        let payload = msg.encode_to_vec();
        let header = Header { kind, payload_len: payload.len() as u64, crc: crc32fast::hash(&payload) };
        let tmp = path.with_extension("img.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&header.encode())?;
            f.write_all(&payload)?;
            f.flush()?;
            fs::rename(&tmp, path)
        };
        write().map_err(|e| ImageError::io(path, e))
    }

    /// Reads and validates one message.
    pub fn read_msg<M: Message + Default>(&self, path: &Path, kind: Kind) -> Result<M, ImageError> {
        let data = fs::read(path).map_err(|e| ImageError::io(path, e))?;
        let header = Header::decode(path, &data, kind)?;
        let payload = &data[HEADER_LEN..];
        if (payload.len() as u64) != header.payload_len {
            return Err(ImageError::Truncated {
                path: path.to_path_buf(),
                expected: header.payload_len,
                found: payload.len() as u64,
            });
        }
        let crc = crc32fast::hash(payload);
        if crc != header.crc {
            return Err(ImageError::Checksum { path: path.to_path_buf(), expected: header.crc, found: crc });
        }
        M::decode(payload).map_err(|source| ImageError::Decode { path: path.to_path_buf(), source })
    }

    /// Opens every page shard of `pid`, validating headers and lengths
    /// against the page map.
    pub fn open_page_shards(&self, pid: i32, pm: &pb::PageMap) -> Result<Vec<File>, ImageError> {
        let runs: Vec<crate::mem::Run> =
            pm.runs.iter().map(|r| crate::mem::Run { vaddr: r.vaddr, pages: r.nr_pages }).collect();
        let sizes = crate::mem::shard_sizes(&runs, pm.shards.max(1) as usize);
        sizes.iter().enumerate().map(|(k, &bytes)| self.open_pages(pid, k, bytes)).collect()
    }

    /// Opens a page file for reading, validating its header and length
    /// against the bytes the page map puts in it.
    pub fn open_pages(&self, pid: i32, shard: usize, bytes: u64) -> Result<File, ImageError> {
        let path = self.pages_path(pid, shard);
        let mut f = File::open(&path).map_err(|e| ImageError::io(&path, e))?;
        let mut head = [0u8; HEADER_LEN];
        f.read_exact(&mut head).map_err(|_| ImageError::BadMagic { path: path.clone() })?;
        let header = Header::decode(&path, &head, Kind::Pages)?;
        let want = bytes;
        let len = f.metadata().map_err(|e| ImageError::io(&path, e))?.len();
        let found = len.saturating_sub(PAGE_SIZE);
        if header.payload_len != want || found != want {
            return Err(ImageError::Truncated { path, expected: want, found });
        }
        Ok(f)
    }

    /// Creates page shard `shard` of `pid` and writes its (page-padded)
    /// header for `bytes` bytes of pages.
    pub fn create_pages(&self, pid: i32, shard: usize, bytes: u64) -> Result<File, ImageError> {
        let path = self.pages_path(pid, shard);
        let mut f = File::create(&path).map_err(|e| ImageError::io(&path, e))?;
        let header = Header { kind: Kind::Pages, payload_len: bytes, crc: 0 };
        let mut first = vec![0u8; PAGE_SIZE as usize];
        first[..HEADER_LEN].copy_from_slice(&header.encode());
        f.write_all(&first).map_err(|e| ImageError::io(&path, e))?;
        Ok(f)
    }

    /// Reads `inventory.img`.
    pub fn read_inventory(&self) -> Result<pb::Inventory, ImageError> {
        self.read_msg(&self.inventory_path(), Kind::Inventory)
    }

    /// Reads `task-<pid>.img` and checks it is about `pid`.
    pub fn read_task(&self, pid: i32) -> Result<pb::Task, ImageError> {
        let path = self.task_path(pid);
        let task: pb::Task = self.read_msg(&path, Kind::Task)?;
        if task.pid != pid {
            return Err(ImageError::Invalid { path, what: format!("holds pid {}, expected {pid}", task.pid) });
        }
        Ok(task)
    }

    /// Reads `pagemap-<pid>.img`.
    pub fn read_pagemap(&self, pid: i32) -> Result<pb::PageMap, ImageError> {
        let path = self.pagemap_path(pid);
        let pm: pb::PageMap = self.read_msg(&path, Kind::PageMap)?;
        let sum: u64 = pm.runs.iter().fold(0u64, |a, r| a.saturating_add(r.nr_pages));
        // Addresses stay below 2^57 (5-level paging): anything else is corrupt.
        const LIMIT: u64 = 1 << 57;
        if let Some(r) =
            pm.runs.iter().find(|r| r.vaddr >= LIMIT || r.nr_pages >= LIMIT / PAGE_SIZE - r.vaddr / PAGE_SIZE)
        {
            return Err(ImageError::Invalid {
                path,
                what: format!("page run at {:#x} of {} pages is outside any address space", r.vaddr, r.nr_pages),
            });
        }
        if pm.shards > 16 {
            return Err(ImageError::Invalid {
                path,
                what: format!("{} page shards (crt writes at most 16)", pm.shards),
            });
        }
        if sum != pm.total_pages || pm.page_size != PAGE_SIZE {
            return Err(ImageError::Invalid {
                path,
                what: format!(
                    "page runs add up to {sum} pages of {} bytes, header says {} of {PAGE_SIZE}",
                    pm.page_size, pm.total_pages
                ),
            });
        }
        Ok(pm)
    }
}
