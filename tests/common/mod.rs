//! Helpers shared by the facade's integration tests: opening each backend or saying why it is
//! skipped, and whether a backend is required (then its absence fails).

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use tessera::{Backend, BackendKind, Error};

/// Whether this backend must open and support every op here: `TESSERA_REQUIRE_BACKENDS`
/// (comma-separated, e.g. `cuda,vulkan`) names it, or, for Vulkan, `TESSERA_REQUIRE_VULKAN=1`.
/// The GPU machine's script sets both, so nothing passes there by being skipped.
pub fn required(kind: BackendKind) -> bool {
    let listed = std::env::var("TESSERA_REQUIRE_BACKENDS")
        .unwrap_or_default()
        .split(',')
        .any(|r| r.trim().eq_ignore_ascii_case(kind.name()));
    let vulkan = kind == BackendKind::Vulkan
        && std::env::var("TESSERA_REQUIRE_VULKAN").is_ok_and(|v| v.trim() == "1");
    listed || vulkan
}

/// Opens the backend, or prints why it is skipped (failing if it is required).
pub fn open_or_skip(kind: BackendKind) -> Option<Box<dyn Backend>> {
    match tessera::backend(kind) {
        Ok(b) => Some(b),
        Err(e) => {
            if required(kind) {
                panic!("backend {kind} is required (TESSERA_REQUIRE_BACKENDS / TESSERA_REQUIRE_VULKAN) but: {e}");
            }
            println!("skipped: {e}");
            None
        }
    }
}

/// An op the backend does not implement yet is reported as skipped (once), unless the backend
/// is required; anything else is a failure.
pub fn unsupported_is_skipped<T>(
    kind: BackendKind,
    result: tessera::Result<T>,
    skipped: &std::sync::Mutex<Option<String>>,
) -> tessera::Result<Option<T>> {
    match result {
        Err(e @ Error::Unsupported { .. }) if !required(kind) => {
            *skipped.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            Ok(None)
        }
        other => other.map(Some),
    }
}

/// `PROPTEST_CASES` if set (the sanitizer run lowers it), else `default`.
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}
