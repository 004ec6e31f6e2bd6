//! Finding the CUDA driver and NVRTC at run time, without linking either.

use libloading::Library;
use std::ffi::{c_char, c_int, CStr};

/// What was found of CUDA on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaProbe {
    /// The driver library that loaded and its version (e.g. `libcuda.so.1, driver API 13.0`),
    /// or why none did.
    pub driver: Result<String, String>,
    /// The NVRTC library that loaded, or why none did.
    pub nvrtc: Result<String, String>,
    /// Names of the CUDA devices (empty when the driver is missing or reports none).
    pub devices: Vec<String>,
}

#[cfg(not(windows))]
const DRIVER_NAMES: &[&str] = &["libcuda.so.1", "libcuda.so"];
#[cfg(windows)]
const DRIVER_NAMES: &[&str] = &["nvcuda.dll"];
#[cfg(not(windows))]
const NVRTC_NAMES: &[&str] = &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];
#[cfg(windows)]
const NVRTC_NAMES: &[&str] = &["nvrtc64_130_0.dll", "nvrtc64_120_0.dll"];

/// Candidate NVRTC library names, searched on the loader's path (`LD_LIBRARY_PATH`), as
/// cudarc does when it loads NVRTC.
fn nvrtc_candidates() -> Vec<String> {
    NVRTC_NAMES.iter().map(|s| s.to_string()).collect()
}

/// Loads the first library of `names` that loads; otherwise says which were tried.
fn open_first(names: &[String]) -> Result<(Library, String), String> {
    for name in names {
        // SAFETY: loading a shared library runs its initialisers; the CUDA driver and NVRTC are
        // designed to be loaded this way (it is how the CUDA runtime itself finds the driver).
        if let Ok(lib) = unsafe { Library::new(name) } {
            return Ok((lib, name.clone()));
        }
    }
    Err(format!("could not load {}", names.join(" or ")))
}

type CuInit = unsafe extern "C" fn(flags: u32) -> c_int;
type CuDriverGetVersion = unsafe extern "C" fn(version: *mut c_int) -> c_int;
type CuDeviceGetCount = unsafe extern "C" fn(count: *mut c_int) -> c_int;
type CuDeviceGet = unsafe extern "C" fn(device: *mut c_int, ordinal: c_int) -> c_int;
type CuDeviceGetName = unsafe extern "C" fn(name: *mut c_char, len: c_int, device: c_int) -> c_int;

/// Queries the driver for its version and device names.
fn query_driver(lib: &Library) -> Result<(i32, Vec<String>), String> {
    // SAFETY: the symbol types match the CUDA driver API's C prototypes (cuda.h), every pointer
    // passed is to a live local of the declared type, and the name buffer's length is passed.
    unsafe {
        let sym = |name: &[u8]| format!("symbol {} missing", String::from_utf8_lossy(name));
        let init = lib.get::<CuInit>(b"cuInit\0").map_err(|_| sym(b"cuInit"))?;
        let get_version = lib
            .get::<CuDriverGetVersion>(b"cuDriverGetVersion\0")
            .map_err(|_| sym(b"cuDriverGetVersion"))?;
        let count_fn = lib
            .get::<CuDeviceGetCount>(b"cuDeviceGetCount\0")
            .map_err(|_| sym(b"cuDeviceGetCount"))?;
        let get = lib
            .get::<CuDeviceGet>(b"cuDeviceGet\0")
            .map_err(|_| sym(b"cuDeviceGet"))?;
        let get_name = lib
            .get::<CuDeviceGetName>(b"cuDeviceGetName\0")
            .map_err(|_| sym(b"cuDeviceGetName"))?;
        let rc = init(0);
        if rc != 0 {
            return Err(format!(
                "cuInit failed with CUresult {rc} (no usable GPU or driver)"
            ));
        }
        let mut version = 0;
        get_version(&mut version);
        let mut count = 0;
        let rc = count_fn(&mut count);
        if rc != 0 {
            return Err(format!("cuDeviceGetCount failed with CUresult {rc}"));
        }
        let mut names = Vec::new();
        for ordinal in 0..count {
            let mut dev = 0;
            let mut buf = [0 as c_char; 256];
            if get(&mut dev, ordinal) == 0
                && get_name(buf.as_mut_ptr(), buf.len() as c_int, dev) == 0
            {
                names.push(CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned());
            }
        }
        Ok((version, names))
    }
}

/// Whether the CUDA driver library loads (looked up once per process). Checked before a driver
/// call that can run without a device (encoding a tensor map), which would otherwise panic in
/// cudarc when the driver is loaded at run time and missing. Works whether cudarc loads the
/// driver at run time or the build links it (candle-core's CUDA backend does).
pub(crate) fn driver_library_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| {
        let names: Vec<String> = DRIVER_NAMES.iter().map(|s| s.to_string()).collect();
        open_first(&names).is_ok()
    })
}

/// Looks for the CUDA driver, its devices and NVRTC. Never panics.
pub fn probe() -> CudaProbe {
    let driver_names: Vec<String> = DRIVER_NAMES.iter().map(|s| s.to_string()).collect();
    let (driver, devices) = match open_first(&driver_names) {
        Err(e) => (
            Err(format!(
                "no CUDA driver: {e} (is the NVIDIA driver installed?)"
            )),
            Vec::new(),
        ),
        Ok((lib, name)) => match query_driver(&lib) {
            Ok((v, names)) => (
                Ok(format!(
                    "{name}, driver API {}.{}",
                    v / 1000,
                    (v % 1000) / 10
                )),
                names,
            ),
            Err(e) => (Err(format!("{name} loaded but {e}")), Vec::new()),
        },
    };
    let nvrtc = match open_first(&nvrtc_candidates()) {
        Ok((_, name)) => Ok(name),
        Err(e) => Err(format!(
            "no NVRTC: {e} (install CUDA's NVRTC, e.g. `pip install nvidia-cuda-nvrtc`, and put the folder of libnvrtc on LD_LIBRARY_PATH)"
        )),
    };
    CudaProbe {
        driver,
        nvrtc,
        devices,
    }
}
