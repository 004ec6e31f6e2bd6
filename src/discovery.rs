//! Finding a backend: `best available` (CUDA, then Vulkan, then CPU), or the one forced by
//! `TESSERA_BACKEND=cpu|cuda|vulkan`.

use crate::{Backend, BackendKind, CpuBackend, Error, Result};

/// The environment variable that forces a backend.
pub const BACKEND_ENV: &str = "TESSERA_BACKEND";

/// Whether a backend can be used here, and what it found.
#[derive(Clone, Debug)]
pub struct BackendStatus {
    /// The backend.
    pub kind: BackendKind,
    /// Whether it was compiled in (cargo feature).
    pub compiled: bool,
    /// Device names found (possibly even when the backend is unusable).
    pub devices: Vec<String>,
    /// Details of what was found (libraries, versions).
    pub details: Vec<String>,
    /// `Ok` if the backend opens; otherwise why not.
    pub usable: std::result::Result<(), String>,
    /// The device is a software implementation (e.g. lavapipe, Mesa's CPU Vulkan driver):
    /// usable when forced, but passed over by [`best_available`], which prefers the CPU
    /// reference to a CPU emulating a GPU.
    pub software: bool,
}

/// Opens the given backend, or explains why it is not available.
pub fn backend(kind: BackendKind) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Cpu => Ok(Box::new(CpuBackend::new())),
        BackendKind::Cuda => open_cuda(),
        BackendKind::Vulkan => open_vulkan(),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Box<dyn Backend>> {
    Ok(Box::new(tessera_cuda::CudaBackend::new()?))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Box<dyn Backend>> {
    Err(Error::BackendUnavailable {
        backend: BackendKind::Cuda,
        reason: "tessera was built without the `cuda` feature".to_string(),
    })
}

#[cfg(feature = "vulkan")]
fn open_vulkan() -> Result<Box<dyn Backend>> {
    Ok(Box::new(tessera_vulkan::VulkanBackend::new()?))
}

/// Whether an open Vulkan backend runs on a CPU implementation (lavapipe).
#[cfg(feature = "vulkan")]
fn vulkan_is_software(backend: &tessera_vulkan::VulkanBackend) -> bool {
    backend.features().is_cpu()
}

/// Opens `kind` for [`best_available`]: `None` when it does not open, or when it is a
/// software Vulkan device (passed over). Each backend is opened once.
fn open_for_best(kind: BackendKind) -> Option<Box<dyn Backend>> {
    #[cfg(feature = "vulkan")]
    if kind == BackendKind::Vulkan {
        return tessera_vulkan::VulkanBackend::new()
            .ok()
            .filter(|b| !vulkan_is_software(b))
            .map(|b| Box::new(b) as Box<dyn Backend>);
    }
    backend(kind).ok()
}

#[cfg(not(feature = "vulkan"))]
fn open_vulkan() -> Result<Box<dyn Backend>> {
    Err(Error::BackendUnavailable {
        backend: BackendKind::Vulkan,
        reason: "tessera was built without the `vulkan` feature".to_string(),
    })
}

/// The backend forced by `TESSERA_BACKEND`, if the variable is set (and not empty).
pub fn forced_backend() -> Result<Option<BackendKind>> {
    match std::env::var(BACKEND_ENV) {
        Ok(v) if !v.trim().is_empty() => BackendKind::parse(&v).map(Some).map_err(|_| {
            Error::invalid(
                "backend selection",
                BACKEND_ENV,
                "one of cpu, cuda, vulkan",
                format!("{v:?}"),
            )
        }),
        _ => Ok(None),
    }
}

/// The backend to use: the one `TESSERA_BACKEND` names (an error if it is not available:
/// never a silent fallback), else the first of CUDA, Vulkan and CPU that opens, passing over a
/// software Vulkan device (lavapipe), which only `TESSERA_BACKEND=vulkan` selects. Each backend
/// is opened at most once.
pub fn best_available() -> Result<Box<dyn Backend>> {
    if let Some(kind) = forced_backend()? {
        return backend(kind);
    }
    for kind in BackendKind::PREFERENCE {
        if let Some(b) = open_for_best(kind) {
            return Ok(b);
        }
    }
    Ok(Box::new(CpuBackend::new()))
}

/// What every backend finds on this machine (for `tessera info`). Each backend is opened at
/// most once.
pub fn probe_all() -> Vec<BackendStatus> {
    let mut out = vec![BackendStatus {
        kind: BackendKind::Cpu,
        compiled: true,
        devices: vec!["pure-Rust reference".to_string()],
        details: vec![],
        usable: Ok(()),
        software: false,
    }];
    out.insert(0, probe_vulkan());
    out.insert(0, probe_cuda());
    out
}

#[cfg(feature = "cuda")]
fn probe_cuda() -> BackendStatus {
    let p = tessera_cuda::probe();
    let mut details = Vec::new();
    details.push(match &p.driver {
        Ok(s) => format!("driver: {s}"),
        Err(e) => format!("driver: {e}"),
    });
    details.push(match &p.nvrtc {
        Ok(s) => format!("nvrtc: {s}"),
        Err(e) => format!("nvrtc: {e}"),
    });
    BackendStatus {
        kind: BackendKind::Cuda,
        compiled: true,
        devices: p.devices,
        details,
        usable: open_cuda().map(|_| ()).map_err(|e| e.to_string()),
        software: false,
    }
}

#[cfg(not(feature = "cuda"))]
fn probe_cuda() -> BackendStatus {
    BackendStatus {
        kind: BackendKind::Cuda,
        compiled: false,
        devices: vec![],
        details: vec![],
        usable: open_cuda().map(|_| ()).map_err(|e| e.to_string()),
        software: false,
    }
}

#[cfg(feature = "vulkan")]
fn probe_vulkan() -> BackendStatus {
    let p = tessera_vulkan::probe();
    let mut details = vec![match &p.loader {
        Ok(s) => format!("loader: {s}"),
        Err(e) => format!("loader: {e}"),
    }];
    // Opened once: the features, whether it is usable and whether it is software all come
    // from this one backend.
    let opened = tessera_vulkan::VulkanBackend::new();
    if let Ok(backend) = &opened {
        details.extend(vulkan_feature_lines(backend.features()));
        details.push(format!("shaders: {}", backend.shader_paths()));
    }
    BackendStatus {
        kind: BackendKind::Vulkan,
        compiled: true,
        devices: p
            .devices
            .iter()
            .map(|d| format!("{} ({}, Vulkan {})", d.name, d.kind, d.api_version))
            .collect(),
        details,
        software: opened.as_ref().is_ok_and(vulkan_is_software),
        usable: opened.map(|_| ()).map_err(|e| e.to_string()),
    }
}

/// `tessera info`'s lines on the chosen Vulkan device: its limits and its cooperative-matrix
/// shapes (`A·B+C->R MxNxK` per component type, subgroup scope).
#[cfg(feature = "vulkan")]
fn vulkan_feature_lines(f: &tessera_vulkan::VulkanFeatures) -> Vec<String> {
    let mut lines = vec![format!("chosen: {}", f.summary())];
    if let Some(driver) = &f.driver {
        lines.push(format!("driver: {driver}"));
    }
    if let Some(units) = f.compute_units {
        lines.push(format!("compute units: {units}"));
    }
    if f.cooperative_matrix {
        let shapes: Vec<String> = f
            .cooperative_matrix_shapes
            .iter()
            .map(|s| {
                format!(
                    "{:?}·{:?}+{:?}->{:?} {}x{}x{}{}",
                    s.a,
                    s.b,
                    s.c,
                    s.result,
                    s.m,
                    s.n,
                    s.k,
                    if s.subgroup_scope {
                        ""
                    } else {
                        " (not subgroup scope)"
                    }
                )
            })
            .collect();
        lines.push(format!("cooperative matrix shapes: {}", shapes.join(", ")));
    }
    lines.push(format!(
        "VK_KHR_shader_bfloat16 (bf16 type and matrices): {}",
        if f.bfloat16 { "enabled" } else { "no" }
    ));
    if f.cooperative_matrix2_nv {
        let configs: Vec<String> = f
            .cooperative_matrix_flexible
            .iter()
            .filter(|c| c.workgroup_scope)
            .map(|c| {
                format!(
                    "{:?}·{:?}+{:?} M/{} N/{} K/{} at {}",
                    c.a,
                    c.b,
                    c.c,
                    c.m_granularity,
                    c.n_granularity,
                    c.k_granularity,
                    c.workgroup_invocations
                )
            })
            .collect();
        lines.push(format!(
            "VK_NV_cooperative_matrix2: enabled; workgroup-scope configurations (type, \
             granularities, invocations): {}",
            configs.join(", ")
        ));
    }
    lines
}

#[cfg(not(feature = "vulkan"))]
fn probe_vulkan() -> BackendStatus {
    BackendStatus {
        kind: BackendKind::Vulkan,
        compiled: false,
        devices: vec![],
        details: vec![],
        usable: open_vulkan().map(|_| ()).map_err(|e| e.to_string()),
        software: false,
    }
}
