//! The one error type of Tessera.

use std::fmt;

/// Which backend an error or a result belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    /// The pure-Rust reference (always there).
    Cpu,
    /// NVIDIA GPUs through the CUDA driver API and NVRTC.
    Cuda,
    /// Any GPU through Vulkan compute shaders.
    Vulkan,
}

impl BackendKind {
    /// Every backend, in the order `best available` tries them (best first).
    pub const PREFERENCE: [BackendKind; 3] =
        [BackendKind::Cuda, BackendKind::Vulkan, BackendKind::Cpu];

    /// The lower-case name used on the command line and in `TESSERA_BACKEND`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Vulkan => "vulkan",
        }
    }

    /// Parses `cpu`, `cuda` or `vulkan` (case-insensitive).
    pub fn parse(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(BackendKind::Cpu),
            "cuda" => Ok(BackendKind::Cuda),
            "vulkan" => Ok(BackendKind::Vulkan),
            _ => Err(Error::invalid(
                "backend",
                "backend name",
                "one of cpu, cuda, vulkan",
                format!("{name:?}"),
            )),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every fallible call of Tessera returns this error.
///
/// Invalid input is always reported as [`Error::InvalidArgument`], naming the operation,
/// the argument, what was expected and what was given; it is detected before any output
/// buffer is written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument does not satisfy the operation's contract.
    #[error("{op}: invalid argument `{arg}`: expected {expected}, got {got}")]
    InvalidArgument {
        /// The operation (e.g. `sparse_attention`).
        op: &'static str,
        /// The argument's name as documented (e.g. `q`, `block_table[3][1]`).
        arg: String,
        /// What the contract asks for.
        expected: String,
        /// What was given.
        got: String,
    },
    /// The backend cannot be used on this machine (no driver, no device, no compiler...).
    #[error("backend {backend} is not available: {reason}")]
    BackendUnavailable {
        /// The backend asked for.
        backend: BackendKind,
        /// Why it is missing, in words a user can act on.
        reason: String,
    },
    /// The backend exists but does not implement this operation or variant.
    #[error("{op} is not supported by the {backend} backend: {reason}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The backend.
        backend: BackendKind,
        /// What is missing.
        reason: String,
    },
    /// The device or its driver failed, with no driver status code to report (e.g. no memory
    /// type fits, or a backend returned outputs of the wrong size). Failures of a driver call
    /// are [`Error::Driver`] or [`Error::OutOfMemory`], which keep the driver's code.
    #[error("{backend} device error: {message}")]
    Device {
        /// The backend.
        backend: BackendKind,
        /// What failed.
        message: String,
    },
    /// A driver call failed with this status code (other than out-of-memory, which is
    /// [`Error::OutOfMemory`]).
    #[error("{backend} driver error ({code}): {message}")]
    Driver {
        /// The backend.
        backend: BackendKind,
        /// The driver's status code (`CUresult`, `VkResult` or `nvrtcResult`).
        code: DriverCode,
        /// What was being done, and the driver's own description of the code.
        message: String,
    },
    /// The device (or the host, for the CPU backend and host-side buffers) could not provide
    /// the memory asked for. The backend stays usable: free memory or use smaller shapes and
    /// call again.
    #[error("{backend} out of memory{}: {message}", requested_suffix(*requested_bytes))]
    OutOfMemory {
        /// The backend.
        backend: BackendKind,
        /// Bytes of the allocation that failed, where known.
        requested_bytes: Option<u64>,
        /// The driver's status code, where a driver reported it (e.g.
        /// `CUDA_ERROR_OUT_OF_MEMORY`, `VK_ERROR_OUT_OF_DEVICE_MEMORY`); `None` when Tessera
        /// refused the size itself (beyond the device's heap or allocation limits).
        code: Option<DriverCode>,
        /// What was being allocated.
        message: String,
    },
}

fn requested_suffix(bytes: Option<u64>) -> String {
    bytes.map_or_else(String::new, |b| format!(" ({b} bytes requested)"))
}

/// A driver's status code, by API: kept in [`Error::Driver`] and [`Error::OutOfMemory`] so
/// that callers can act on it (retry smaller, reset, report).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DriverCode {
    /// A `CUresult` of the CUDA driver API (e.g. 2 = `CUDA_ERROR_OUT_OF_MEMORY`).
    Cuda(i32),
    /// A `VkResult` (e.g. -2 = `VK_ERROR_OUT_OF_DEVICE_MEMORY`).
    Vulkan(i32),
    /// An `nvrtcResult` of NVRTC (e.g. 1 = `NVRTC_ERROR_OUT_OF_MEMORY`).
    Nvrtc(i32),
}

impl DriverCode {
    /// `CUDA_ERROR_OUT_OF_MEMORY`.
    pub const CUDA_ERROR_OUT_OF_MEMORY: i32 = 2;
    /// `VK_ERROR_OUT_OF_HOST_MEMORY`.
    pub const VK_ERROR_OUT_OF_HOST_MEMORY: i32 = -1;
    /// `VK_ERROR_OUT_OF_DEVICE_MEMORY`.
    pub const VK_ERROR_OUT_OF_DEVICE_MEMORY: i32 = -2;
    /// `NVRTC_ERROR_OUT_OF_MEMORY`.
    pub const NVRTC_ERROR_OUT_OF_MEMORY: i32 = 1;

    /// Whether the code says that memory ran out (device or host).
    pub fn is_out_of_memory(self) -> bool {
        match self {
            DriverCode::Cuda(c) => c == Self::CUDA_ERROR_OUT_OF_MEMORY,
            DriverCode::Vulkan(c) => {
                c == Self::VK_ERROR_OUT_OF_DEVICE_MEMORY || c == Self::VK_ERROR_OUT_OF_HOST_MEMORY
            }
            DriverCode::Nvrtc(c) => c == Self::NVRTC_ERROR_OUT_OF_MEMORY,
        }
    }

    /// The raw value.
    pub fn raw(self) -> i32 {
        match self {
            DriverCode::Cuda(c) | DriverCode::Vulkan(c) | DriverCode::Nvrtc(c) => c,
        }
    }
}

impl fmt::Display for DriverCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverCode::Cuda(c) => write!(f, "CUresult {c}"),
            DriverCode::Vulkan(c) => write!(f, "VkResult {c}"),
            DriverCode::Nvrtc(c) => write!(f, "nvrtcResult {c}"),
        }
    }
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(
        op: &'static str,
        arg: impl Into<String>,
        expected: impl Into<String>,
        got: impl Into<String>,
    ) -> Self {
        Error::InvalidArgument {
            op,
            arg: arg.into(),
            expected: expected.into(),
            got: got.into(),
        }
    }

    /// The error of a failed driver call: [`Error::OutOfMemory`] when `code` says memory ran
    /// out (with `requested_bytes` if known), else [`Error::Driver`].
    pub fn from_driver(
        backend: BackendKind,
        code: DriverCode,
        message: impl Into<String>,
        requested_bytes: Option<u64>,
    ) -> Self {
        if code.is_out_of_memory() {
            Error::OutOfMemory {
                backend,
                requested_bytes,
                code: Some(code),
                message: message.into(),
            }
        } else {
            Error::Driver {
                backend,
                code,
                message: message.into(),
            }
        }
    }

    /// The driver's status code, if this error came from a driver call.
    pub fn driver_code(&self) -> Option<DriverCode> {
        match self {
            Error::Driver { code, .. } => Some(*code),
            Error::OutOfMemory { code, .. } => *code,
            _ => None,
        }
    }

    /// Whether this is an [`Error::OutOfMemory`].
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Error::OutOfMemory { .. })
    }

    /// The argument named by an [`Error::InvalidArgument`], if this is one.
    pub fn argument(&self) -> Option<&str> {
        match self {
            Error::InvalidArgument { arg, .. } => Some(arg),
            _ => None,
        }
    }
}

/// Tessera's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_codes_become_out_of_memory() {
        for code in [
            DriverCode::Cuda(2),
            DriverCode::Vulkan(-1),
            DriverCode::Vulkan(-2),
            DriverCode::Nvrtc(1),
        ] {
            let e = Error::from_driver(BackendKind::Cuda, code, "allocating", Some(1 << 50));
            assert!(e.is_out_of_memory(), "{code}: {e:?}");
            assert_eq!(e.driver_code(), Some(code));
            assert!(
                e.to_string().contains("1125899906842624 bytes requested"),
                "{e}"
            );
        }
        // CUDA_ERROR_LAUNCH_FAILED, VK_ERROR_DEVICE_LOST: not memory.
        for code in [DriverCode::Cuda(719), DriverCode::Vulkan(-4)] {
            let e = Error::from_driver(BackendKind::Vulkan, code, "launching", None);
            assert!(!e.is_out_of_memory());
            assert!(matches!(e, Error::Driver { code: c, .. } if c == code));
            assert!(e.to_string().contains(&code.raw().to_string()), "{e}");
        }
    }
}
