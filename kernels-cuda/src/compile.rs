//! Run-time compilation of the `.cu` kernels with NVRTC, and the module cache.
//!
//! Each kernel source is a file under `kernels-cuda/kernels/`, embedded in the crate; NVRTC
//! compiles `common.cuh`, then the source's extra headers ([`KernelSource::headers`], e.g.
//! Hopper primitives), then the source. A [`KernelVariant`] is a source plus the compile-time
//! constants that specialize it (head dim, page size, tile shape...), rendered by the plan layer
//! ([`crate::plan`]). It is compiled once per architecture to a cubin
//! (`--gpu-architecture=sm_90a` on Hopper, so that wgmma and setmaxnreg are there), kept in
//! memory, and on disk under a key hashing the source, the options, the architecture and the
//! NVRTC version, so that a second process starts without compiling.

use sha2::{Digest, Sha256};
use std::ffi::{c_char, CStr, CString};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use tessera_core::{BackendKind, Error, Result};

/// Shared device helpers, prepended to every kernel.
pub const COMMON: &str = include_str!("../kernels/common.cuh");

/// A header compiled before a kernel source (after `common.cuh`): device code shared by several
/// kernels, e.g. `sm90/hopper.cuh`. NVRTC from PyPI has no include path, so headers are pasted
/// in order rather than `#include`d.
#[derive(Clone, Copy, Debug)]
pub struct KernelHeader {
    /// File name under `kernels-cuda/kernels/`, e.g. `sm90/hopper.cuh` (used in `#line` and
    /// error messages).
    pub file: &'static str,
    /// Its text.
    pub code: &'static str,
}

/// One `.cu` file and the headers it needs.
///
/// Identity (equality and hashing) is the file name and the header names: one file name is one
/// text (both are `include_str!`'d), and hashing names keeps the caches' lookups cheap.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// File name under `kernels-cuda/kernels/`, e.g. `fp8_quantize.cu`.
    pub file: &'static str,
    /// Its text.
    pub code: &'static str,
    /// Headers compiled before it, in order, after `common.cuh`.
    pub headers: &'static [KernelHeader],
}

impl KernelSource {
    /// A source that needs only `common.cuh`.
    pub const fn new(file: &'static str, code: &'static str) -> Self {
        Self {
            file,
            code,
            headers: &[],
        }
    }

    /// The same source with `headers` compiled before it (after `common.cuh`).
    pub const fn with_headers(self, headers: &'static [KernelHeader]) -> Self {
        Self { headers, ..self }
    }
}

impl PartialEq for KernelSource {
    fn eq(&self, other: &Self) -> bool {
        self.file == other.file
            && self.headers.len() == other.headers.len()
            && self
                .headers
                .iter()
                .zip(other.headers)
                .all(|(a, b)| a.file == b.file)
    }
}

impl Eq for KernelSource {}

impl Hash for KernelSource {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.file.hash(state);
        for h in self.headers {
            h.file.hash(state);
        }
    }
}

/// A kernel source specialized by compile-time constants (`-D NAME=VALUE`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelVariant {
    /// The source.
    pub source: KernelSource,
    /// The constants, in a fixed order.
    pub defines: Vec<(&'static str, String)>,
}

impl KernelVariant {
    /// A variant of `source` with no constants.
    pub fn new(source: KernelSource) -> Self {
        Self {
            source,
            defines: Vec::new(),
        }
    }

    /// Adds a constant.
    pub fn define(mut self, name: &'static str, value: impl ToString) -> Self {
        self.defines.push((name, value.to_string()));
        self
    }

    /// The NVRTC options for `arch` (e.g. `sm_90a`).
    pub fn options(&self, arch: &str) -> Vec<String> {
        let mut o = vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".to_string(),
            // IEEE division and square root, no flush to zero: the quantizers must match the
            // reference bit for bit.
            "--prec-div=true".to_string(),
            "--prec-sqrt=true".to_string(),
            "--ftz=false".to_string(),
        ];
        o.extend(self.defines.iter().map(|(k, v)| format!("-D{k}={v}")));
        o
    }

    /// The full text NVRTC compiles: `common.cuh`, the headers, the source (each after a
    /// `#line` naming its file, so that errors point into the right file).
    pub fn full_source(&self) -> String {
        let mut text = format!("#line 1 \"common.cuh\"\n{COMMON}\n");
        for h in self.source.headers {
            text.push_str(&format!("#line 1 \"{}\"\n{}\n", h.file, h.code));
        }
        text.push_str(&format!(
            "#line 1 \"{}\"\n{}",
            self.source.file, self.source.code
        ));
        text
    }

    /// The value of constant `name`, if set.
    pub fn define_value(&self, name: &str) -> Option<&str> {
        self.defines
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The same variant without constant `name` (for the test that a missing constant fails to
    /// compile).
    pub fn without_define(&self, name: &str) -> Self {
        Self {
            source: self.source,
            defines: self
                .defines
                .iter()
                .filter(|(k, _)| *k != name)
                .cloned()
                .collect(),
        }
    }

    /// A short human-readable name: the file and the constants.
    pub fn label(&self) -> String {
        let d: Vec<String> = self
            .defines
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{}[{}]", self.source.file, d.join(","))
    }

    /// The cache key: a hash of the source, the options, the architecture and NVRTC's version.
    pub fn cache_key(&self, arch: &str, nvrtc_version: (i32, i32)) -> String {
        let mut h = Sha256::new();
        h.update(self.full_source().as_bytes());
        for o in self.options(arch) {
            h.update(o.as_bytes());
            h.update([0]);
        }
        h.update(format!("nvrtc {}.{}", nvrtc_version.0, nvrtc_version.1).as_bytes());
        let digest = h.finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn nvrtc_error(what: &str, e: impl NvrtcStatus) -> Error {
    match e.nvrtc_code() {
        Some(code) => Error::from_driver(
            BackendKind::Cuda,
            tessera_core::DriverCode::Nvrtc(code),
            format!("NVRTC {what}: {e:?}"),
            None,
        ),
        None => Error::Device {
            backend: BackendKind::Cuda,
            message: format!("NVRTC {what}: {e:?}"),
        },
    }
}

/// What [`nvrtc_error`] is given: an NVRTC error (whose `nvrtcResult` it keeps) or a plain
/// description.
trait NvrtcStatus: std::fmt::Debug {
    fn nvrtc_code(&self) -> Option<i32> {
        None
    }
}

impl NvrtcStatus for cudarc::nvrtc::result::NvrtcError {
    fn nvrtc_code(&self) -> Option<i32> {
        Some(self.0 as i32)
    }
}

impl NvrtcStatus for &str {}

impl NvrtcStatus for std::ffi::NulError {}

/// NVRTC's version. The caller must have checked that NVRTC is present (see `crate::probe`),
/// since the loader behind it panics otherwise.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers to live locals.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| nvrtc_error("version", e))?;
    Ok((major, minor))
}

/// Compiles `variant` for `arch` to a cubin. The caller must have checked that NVRTC is present.
pub fn compile_cubin(variant: &KernelVariant, arch: &str) -> Result<Vec<u8>> {
    let src = CString::new(variant.full_source())
        .map_err(|_| nvrtc_error("source", "the kernel source contains a NUL byte"))?;
    let name = CString::new(variant.source.file).map_err(|e| nvrtc_error("name", e))?;
    let prog = cudarc::nvrtc::result::create_program(&src, Some(&name))
        .map_err(|e| nvrtc_error("create program", e))?;
    let options = variant.options(arch);
    // SAFETY: `prog` was just created and is destroyed once below; the log and cubin buffers are
    // sized from NVRTC's own size queries.
    let result = unsafe {
        let compiled = cudarc::nvrtc::result::compile_program(prog, &options);
        let log = cudarc::nvrtc::result::get_program_log(prog)
            .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
            .unwrap_or_default();
        match compiled {
            Err(_) => Err(Error::Device {
                backend: BackendKind::Cuda,
                message: format!(
                    "NVRTC failed to compile {} for {arch}:\n{log}",
                    variant.label()
                ),
            }),
            Ok(()) => {
                let mut size = 0usize;
                cudarc::nvrtc::sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| nvrtc_error("cubin size", e))?;
                let mut cubin = vec![0u8; size];
                cudarc::nvrtc::sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char)
                    .result()
                    .map_err(|e| nvrtc_error("cubin", e))?;
                Ok(cubin)
            }
        }
    };
    // SAFETY: `prog` is live and not used after this.
    let _ = unsafe { cudarc::nvrtc::result::destroy_program(prog) };
    result
}

/// The on-disk cache folder: `cuda` in [`tessera_core::cache_root`] (`TESSERA_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/tessera`, else `~/.cache/tessera`). `None` when none can be determined
/// (then only memory is used).
pub fn disk_cache_dir() -> Option<PathBuf> {
    tessera_core::cache_root().map(|d| d.join("cuda"))
}

/// Returns the cubin of `variant` for `arch`: from the disk cache ([`disk_cache_dir`]) if
/// present, else compiled (and stored). Returns whether it compiled.
pub fn cached_cubin(variant: &KernelVariant, arch: &str) -> Result<(Vec<u8>, bool)> {
    cached_cubin_in(variant, arch, disk_cache_dir().as_deref())
}

/// Like [`cached_cubin`] with an explicit cache folder (`None`: compile every time). A cache
/// that cannot be read or written is not an error: the kernel is compiled instead.
pub fn cached_cubin_in(
    variant: &KernelVariant,
    arch: &str,
    dir: Option<&std::path::Path>,
) -> Result<(Vec<u8>, bool)> {
    let key = variant.cache_key(arch, nvrtc_version()?);
    let path = dir.map(|d| d.join(format!("{key}.cubin")));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            if !bytes.is_empty() {
                return Ok((bytes, false));
            }
        }
    }
    let cubin = compile_cubin(variant, arch)?;
    if let Some(p) = &path {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // Write to a temporary name and rename, so that a concurrent reader never sees half a file.
        // The name is unique per process and call, so that two threads (two backends of one
        // process) writing the same variant at once never write into one temporary file.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = p.with_extension(format!("tmp{}-{write}", std::process::id()));
        if std::fs::write(&tmp, &cubin).is_ok() {
            let _ = std::fs::rename(&tmp, p);
        }
    }
    Ok((cubin, true))
}
