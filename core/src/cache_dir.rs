//! Where the backends keep what they persist between processes (compiled kernels, tuned plans).

use std::path::PathBuf;

/// The root of Tessera's on-disk caches: `TESSERA_CACHE_DIR`, else `$XDG_CACHE_HOME/tessera`,
/// else `~/.cache/tessera`. `None` when none can be determined (the backends then keep
/// everything in memory). Each backend uses a folder of its own below it (`cuda`, `vulkan`).
pub fn cache_root() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("TESSERA_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("tessera"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("tessera"))
}
