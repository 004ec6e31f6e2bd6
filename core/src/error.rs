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
    /// The device or its driver reported an error.
    #[error("{backend} device error: {message}")]
    Device {
        /// The backend.
        backend: BackendKind,
        /// The driver's message.
        message: String,
    },
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
