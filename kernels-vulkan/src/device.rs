//! The Vulkan instance, the chosen physical device with what it offers ([`VulkanFeatures`]), the
//! logical device and its compute queue ([`VulkanContext`]).
//!
//! Device choice: `TESSERA_VULKAN_DEVICE` (an index in the loader's order, as `tessera info`
//! lists them, or a case-insensitive substring of the name) picks one; otherwise the first usable
//! device by type: discrete, integrated, virtual, CPU, other. Usable means Vulkan 1.1 or newer, a
//! compute queue, `VK_KHR_push_descriptor` and subgroup arithmetic in compute shaders (what the
//! portable shaders use). Every optional feature the shaders may want (8/16-bit storage, f16 and
//! int8 arithmetic, subgroup size control, cooperative matrices) is enabled when the device
//! supports it and recorded in [`VulkanFeatures`], so that later shader paths only have to ask.

use crate::vk_error;
use ash::vk;
use std::ffi::{c_char, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use tessera_core::{BackendKind, Error, Result};

/// The environment variable that picks the Vulkan device: an index (`0`, `1`, ... in the
/// loader's order) or a case-insensitive substring of the device name (`llvmpipe`, `H200`).
pub const DEVICE_ENV: &str = "TESSERA_VULKAN_DEVICE";

/// The backend's settings, read once when a context is opened ([`VulkanSettings::from_env`],
/// or given to [`VulkanContext::with_settings`]) and never again: changing the environment
/// afterwards does not change an open backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VulkanSettings {
    /// The device to open: an index in the loader's order or a case-insensitive substring of
    /// the name ([`DEVICE_ENV`]); `None`: the best usable device.
    pub device: Option<String>,
    /// Keep to the portable shaders even where cooperative matrices are available
    /// ([`crate::ops::PORTABLE_ENV`] = `1`).
    pub portable: bool,
    /// Build pipelines from `<dir>/<name>.spv` where such a file exists, instead of the
    /// embedded SPIR-V ([`crate::pipeline::SPIRV_DIR_ENV`]; a development aid, each use logged).
    pub spirv_dir: Option<std::path::PathBuf>,
    /// The MLA decode's pass-1 shader instead of the default choice
    /// ([`crate::ops::mla::MLA_DECODE_ENV`]: `tiled`, `stream` or
    /// `stream:ROWS,KEYS,PREFETCH,UNROLLED`;
    /// a development aid for measuring, checked when a decode is planned).
    pub mla_decode: Option<String>,
    /// The folder of the tuned-plan file ([`crate::plan::VulkanPlans`]): `vulkan` in
    /// [`tessera_core::cache_root`] by [`VulkanSettings::from_env`]; `None`: plans live in
    /// memory only (none read, `save` writes nothing).
    pub plan_dir: Option<std::path::PathBuf>,
    /// Log what the driver says of each pipeline it builds (registers, local memory, ...:
    /// `VK_KHR_pipeline_executable_properties`, where the device has it) at level info
    /// ([`PIPELINE_STATS_ENV`] = `1`; a development aid).
    pub pipeline_statistics: bool,
}

/// `TESSERA_VULKAN_PIPELINE_STATS=1`: [`VulkanSettings::pipeline_statistics`].
pub const PIPELINE_STATS_ENV: &str = "TESSERA_VULKAN_PIPELINE_STATS";

impl VulkanSettings {
    /// The settings from `TESSERA_VULKAN_DEVICE`, `TESSERA_VULKAN_PORTABLE` (`1` to set),
    /// `TESSERA_VULKAN_SPIRV_DIR`, `TESSERA_VULKAN_MLA_DECODE` and
    /// `TESSERA_VULKAN_PIPELINE_STATS` (`1` to set; empty values count as unset), and the plan
    /// folder from `TESSERA_CACHE_DIR` ([`tessera_core::cache_root`]).
    pub fn from_env() -> Self {
        let non_empty = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string_lossy().trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Self {
            device: non_empty(DEVICE_ENV),
            portable: non_empty(crate::ops::PORTABLE_ENV).is_some_and(|v| v == "1"),
            spirv_dir: std::env::var_os(crate::pipeline::SPIRV_DIR_ENV)
                .filter(|d| !d.is_empty())
                .map(std::path::PathBuf::from),
            mla_decode: non_empty(crate::ops::mla::MLA_DECODE_ENV),
            plan_dir: tessera_core::cache_root().map(|d| d.join("vulkan")),
            pipeline_statistics: non_empty(PIPELINE_STATS_ENV).is_some_and(|v| v == "1"),
        }
    }
}

/// How many times this process has tried to open a Vulkan context (diagnostics: device
/// discovery must open the device once, not once per question).
static OPEN_ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

/// The type of a matrix element in a cooperative-matrix shape (`VkComponentTypeKHR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatrixComponent {
    /// IEEE binary16.
    F16,
    /// IEEE binary32.
    F32,
    /// IEEE binary64.
    F64,
    /// bfloat16 (`VK_KHR_shader_bfloat16`).
    BF16,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// A type this crate does not name (the raw `VkComponentTypeKHR`).
    Other(i32),
}

impl MatrixComponent {
    fn from_vk(t: vk::ComponentTypeKHR) -> Self {
        match t {
            vk::ComponentTypeKHR::FLOAT16 => Self::F16,
            vk::ComponentTypeKHR::FLOAT32 => Self::F32,
            vk::ComponentTypeKHR::FLOAT64 => Self::F64,
            vk::ComponentTypeKHR::SINT8 => Self::I8,
            vk::ComponentTypeKHR::SINT16 => Self::I16,
            vk::ComponentTypeKHR::SINT32 => Self::I32,
            vk::ComponentTypeKHR::SINT64 => Self::I64,
            vk::ComponentTypeKHR::UINT8 => Self::U8,
            vk::ComponentTypeKHR::UINT16 => Self::U16,
            vk::ComponentTypeKHR::UINT32 => Self::U32,
            vk::ComponentTypeKHR::UINT64 => Self::U64,
            // VK_COMPONENT_TYPE_BFLOAT16_KHR, newer than ash's headers.
            t if t.as_raw() == 1_000_141_000 => Self::BF16,
            t => Self::Other(t.as_raw()),
        }
    }
}

/// One cooperative-matrix configuration the device supports (`VkCooperativeMatrixPropertiesKHR`):
/// `Result[M, N] = A[M, K] · B[K, N] + C[M, N]` in one `scope`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CooperativeMatrixShape {
    /// Rows of A, C and the result.
    pub m: u32,
    /// Columns of B, C and the result.
    pub n: u32,
    /// Columns of A, rows of B.
    pub k: u32,
    /// Element type of A.
    pub a: MatrixComponent,
    /// Element type of B.
    pub b: MatrixComponent,
    /// Element type of C.
    pub c: MatrixComponent,
    /// Element type of the result.
    pub result: MatrixComponent,
    /// Whether integer accumulation saturates.
    pub saturating_accumulation: bool,
    /// Whether the matrices are owned by a subgroup (`true`, the KHR extension's only scope in
    /// practice) or by a larger scope.
    pub subgroup_scope: bool,
}

/// One configuration of `VK_NV_cooperative_matrix2`'s flexible dimensions
/// (`VkCooperativeMatrixFlexibleDimensionsPropertiesNV`): matrices of any size that is a
/// multiple of the granularities, `Result[M, N] = A[M, K] · B[K, N] + C[M, N]`, in workgroup
/// scope for workgroups of exactly `workgroup_invocations` (or in subgroup scope).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlexibleMatrixConfig {
    /// M is a multiple of this.
    pub m_granularity: u32,
    /// N is a multiple of this.
    pub n_granularity: u32,
    /// K is a multiple of this.
    pub k_granularity: u32,
    /// Element type of A.
    pub a: MatrixComponent,
    /// Element type of B.
    pub b: MatrixComponent,
    /// Element type of C.
    pub c: MatrixComponent,
    /// Element type of the result.
    pub result: MatrixComponent,
    /// Whether the matrices are owned by a workgroup (else by a subgroup).
    pub workgroup_scope: bool,
    /// Invocations of the workgroup this configuration is for (workgroup scope only).
    pub workgroup_invocations: u32,
}

impl FlexibleMatrixConfig {
    /// Whether a product with these dimensions may use this configuration.
    pub fn fits(&self, m: u32, n: u32, k: u32) -> bool {
        m > 0
            && n > 0
            && k > 0
            && m % self.m_granularity.max(1) == 0
            && n % self.n_granularity.max(1) == 0
            && k % self.k_granularity.max(1) == 0
    }
}

/// What the chosen device offers: limits, subgroups, arithmetic and storage types, matrix units.
/// The shaders choose their variant and specialization constants from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VulkanFeatures {
    /// `deviceName`.
    pub name: String,
    /// `Discrete`, `Integrated`, `Virtual`, `Cpu` or `Other`.
    pub device_type: String,
    /// The device's Vulkan version, `(major, minor, patch)`.
    pub api_version: (u32, u32, u32),
    /// The driver's name and version string (`VkPhysicalDeviceDriverProperties`), if reported.
    pub driver: Option<String>,
    /// The default subgroup size (32 on NVIDIA, 8 on lavapipe with AVX2).
    pub subgroup_size: u32,
    /// The smallest subgroup size a compute shader may run with (`minSubgroupSize` with subgroup
    /// size control, else the default size).
    pub min_subgroup_size: u32,
    /// The largest subgroup size (`maxSubgroupSize`, else the default size).
    pub max_subgroup_size: u32,
    /// Subgroup arithmetic (`subgroupMax`, `subgroupAdd`...) in compute shaders.
    pub subgroup_arithmetic: bool,
    /// Subgroup shuffles in compute shaders.
    pub subgroup_shuffle: bool,
    /// `VK_EXT_subgroup_size_control` (or Vulkan 1.3) with `computeFullSubgroups`, enabled.
    pub subgroup_size_control: bool,
    /// Streaming multiprocessors (`VK_NV_shader_sm_builtins`: 132 on the H200) or compute units
    /// (`VK_AMD_shader_core_properties`), where the driver reports them: how many workgroups run
    /// at once, for the ops that split their work to fill the device (the MLA decode's key
    /// splits).
    pub compute_units: Option<u32>,
    /// `maxComputeSharedMemorySize` in bytes (32 KiB on lavapipe, 48 KiB on NVIDIA).
    pub max_shared_memory_bytes: u32,
    /// `maxComputeWorkGroupInvocations`.
    pub max_workgroup_invocations: u32,
    /// `maxComputeWorkGroupSize`.
    pub max_workgroup_size: [u32; 3],
    /// `maxComputeWorkGroupCount`.
    pub max_workgroup_count: [u32; 3],
    /// `maxStorageBufferRange` in bytes: the most one descriptor may cover.
    pub max_storage_buffer_range: u32,
    /// `minStorageBufferOffsetAlignment` in bytes: buffer ranges given to the device API must
    /// start at a multiple of it.
    pub min_storage_buffer_offset_alignment: u64,
    /// f16 arithmetic in shaders (`shaderFloat16`), enabled.
    pub shader_float16: bool,
    /// 8-bit integer arithmetic in shaders (`shaderInt8`), enabled.
    pub shader_int8: bool,
    /// 16-bit integer arithmetic in shaders (`shaderInt16`), enabled.
    pub shader_int16: bool,
    /// 64-bit integer arithmetic in shaders (`shaderInt64`), enabled.
    pub shader_int64: bool,
    /// 8-bit types in storage buffers (`storageBuffer8BitAccess`), enabled.
    pub storage_buffer_8bit: bool,
    /// 16-bit types in storage buffers (`storageBuffer16BitAccess`), enabled.
    pub storage_buffer_16bit: bool,
    /// `VK_KHR_shader_integer_dot_product` is present.
    pub integer_dot_product: bool,
    /// `VK_KHR_shader_bfloat16` with its bf16 type and bf16 cooperative matrices
    /// (`shaderBFloat16Type`, `shaderBFloat16CooperativeMatrix`), enabled.
    pub bfloat16: bool,
    /// `VK_KHR_cooperative_matrix` is present and `cooperativeMatrix` enabled.
    pub cooperative_matrix: bool,
    /// The cooperative-matrix configurations (empty without the extension).
    pub cooperative_matrix_shapes: Vec<CooperativeMatrixShape>,
    /// `VK_NV_cooperative_matrix2` with workgroup-scope matrices, flexible dimensions,
    /// reductions, conversions, per-element operations and tensor addressing, enabled.
    pub cooperative_matrix2_nv: bool,
    /// `VK_NV_cooperative_matrix2`'s flexible-dimension configurations (empty without it).
    pub cooperative_matrix_flexible: Vec<FlexibleMatrixConfig>,
    /// `VK_KHR_pipeline_executable_properties` with `pipelineExecutableInfo`: what
    /// [`VulkanSettings::pipeline_statistics`] needs (enabled only when that asks for it).
    pub pipeline_statistics: bool,
    /// `maxMemoryAllocationSize` (Vulkan 1.1) in bytes: drivers may refuse larger allocations
    /// (then [`tessera_core::Error::OutOfMemory`] with the `VkResult`).
    pub max_memory_allocation_size: u64,
    /// `maxBufferSize` (Vulkan 1.3) in bytes, where reported: larger buffers are refused with
    /// [`tessera_core::Error::OutOfMemory`] before the driver is asked (Vulkan forbids them).
    pub max_buffer_size: Option<u64>,
    /// The size of the largest memory heap in bytes: no allocation can exceed it (larger ones
    /// are refused with [`tessera_core::Error::OutOfMemory`] before the driver is asked).
    pub largest_heap_bytes: u64,
}

impl VulkanFeatures {
    /// Whether a cooperative-matrix shape with these types exists in subgroup scope (e.g. `F16,
    /// F16, F32` for an f16 GEMM accumulating in f32); returns the first such shape.
    pub fn cooperative_matrix_shape(
        &self,
        a: MatrixComponent,
        b: MatrixComponent,
        c: MatrixComponent,
    ) -> Option<CooperativeMatrixShape> {
        self.cooperative_matrix_shapes
            .iter()
            .copied()
            .find(|s| s.subgroup_scope && s.a == a && s.b == b && s.c == c && s.result == c)
    }

    /// Whether the 16x16x16 shape (what Tessera's cooperative-matrix shaders use) exists in
    /// subgroup scope with A and B of type `ab` and C and the result of type `c`.
    pub fn has_cooperative_matrix_16x16x16(&self, ab: MatrixComponent, c: MatrixComponent) -> bool {
        self.cooperative_matrix_shapes.iter().any(|s| {
            s.subgroup_scope
                && (s.m, s.n, s.k) == (16, 16, 16)
                && (s.a, s.b) == (ab, ab)
                && (s.c, s.result) == (c, c)
        })
    }

    /// The workgroup-scope flexible configuration (`VK_NV_cooperative_matrix2`) for workgroups
    /// of `invocations` with A and B of type `ab` and C and the result of type `c`, if any.
    pub fn flexible_workgroup_config(
        &self,
        invocations: u32,
        ab: MatrixComponent,
        c: MatrixComponent,
    ) -> Option<FlexibleMatrixConfig> {
        self.cooperative_matrix_flexible.iter().copied().find(|f| {
            f.workgroup_scope
                && f.workgroup_invocations == invocations
                && (f.a, f.b) == (ab, ab)
                && (f.c, f.result) == (c, c)
        })
    }

    /// Whether the device is a CPU implementation (lavapipe): `device_type` `Cpu`.
    pub fn is_cpu(&self) -> bool {
        self.device_type == "Cpu"
    }

    /// The device as tuned plans know it ([`crate::plan::VulkanPlans`]): its name and, where
    /// reported, its driver (plans tuned under another driver are not used).
    pub fn plan_key(&self) -> String {
        match &self.driver {
            Some(d) => format!("{} ({d})", self.name),
            None => self.name.clone(),
        }
    }

    /// One line for [`tessera_core::DeviceInfo::name`] and `tessera info`.
    pub fn summary(&self) -> String {
        let (ma, mi, pa) = self.api_version;
        let mut s = format!(
            "{} ({}, Vulkan {ma}.{mi}.{pa}, subgroup {}",
            self.name, self.device_type, self.subgroup_size
        );
        if self.min_subgroup_size != self.max_subgroup_size {
            s += &format!(" [{}..{}]", self.min_subgroup_size, self.max_subgroup_size);
        }
        s += &format!(
            ", {} KiB shared memory",
            self.max_shared_memory_bytes / 1024
        );
        if self.cooperative_matrix {
            s += &format!(
                ", cooperative matrix: {} shapes",
                self.cooperative_matrix_shapes.len()
            );
        } else {
            s += ", no cooperative matrix";
        }
        s + ")"
    }
}

fn device_type_name(t: vk::PhysicalDeviceType) -> &'static str {
    match t {
        vk::PhysicalDeviceType::DISCRETE_GPU => "Discrete",
        vk::PhysicalDeviceType::INTEGRATED_GPU => "Integrated",
        vk::PhysicalDeviceType::VIRTUAL_GPU => "Virtual",
        vk::PhysicalDeviceType::CPU => "Cpu",
        _ => "Other",
    }
}

/// Preference order: lower is better.
fn device_type_rank(t: vk::PhysicalDeviceType) -> u32 {
    match t {
        vk::PhysicalDeviceType::DISCRETE_GPU => 0,
        vk::PhysicalDeviceType::INTEGRATED_GPU => 1,
        vk::PhysicalDeviceType::VIRTUAL_GPU => 2,
        vk::PhysicalDeviceType::CPU => 3,
        _ => 4,
    }
}

/// Copies a fixed-size, NUL-terminated string out of a Vulkan structure.
pub(crate) fn fixed_str(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn unavailable(reason: String) -> Error {
    Error::BackendUnavailable {
        backend: BackendKind::Vulkan,
        reason,
    }
}

/// Which optional features to enable, as queried.
#[derive(Clone, Copy, Default)]
struct Optional {
    storage16: bool,
    storage8: bool,
    float16: bool,
    int8: bool,
    int16: bool,
    int64: bool,
    size_control: bool,
    full_subgroups: bool,
    coop_matrix: bool,
    bfloat16: bool,
    coop_matrix2: bool,
    executable_info: bool,
}

/// `VkPhysicalDeviceCooperativeMatrix2FeaturesNV` (`VK_NV_cooperative_matrix2`), newer than
/// ash's headers: the same layout as the C structure.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct CooperativeMatrix2Features {
    s_type: vk::StructureType,
    p_next: *mut std::ffi::c_void,
    workgroup_scope: vk::Bool32,
    flexible_dimensions: vk::Bool32,
    reductions: vk::Bool32,
    conversions: vk::Bool32,
    per_element_operations: vk::Bool32,
    tensor_addressing: vk::Bool32,
    block_loads: vk::Bool32,
}

/// The extension that [`CooperativeMatrix2Features`] belongs to.
const COOPERATIVE_MATRIX2_NAME: &CStr = c"VK_NV_cooperative_matrix2";

impl Default for CooperativeMatrix2Features {
    fn default() -> Self {
        Self {
            // VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_2_FEATURES_NV
            s_type: vk::StructureType::from_raw(1_000_593_000),
            p_next: std::ptr::null_mut(),
            workgroup_scope: vk::FALSE,
            flexible_dimensions: vk::FALSE,
            reductions: vk::FALSE,
            conversions: vk::FALSE,
            per_element_operations: vk::FALSE,
            tensor_addressing: vk::FALSE,
            block_loads: vk::FALSE,
        }
    }
}

impl CooperativeMatrix2Features {
    /// Whether every feature but block loads is on (what a shader of workgroup-scope matrices
    /// with reductions, per-element operations and tensor loads needs).
    fn usable(&self) -> bool {
        [
            self.workgroup_scope,
            self.flexible_dimensions,
            self.reductions,
            self.conversions,
            self.per_element_operations,
            self.tensor_addressing,
        ]
        .iter()
        .all(|&f| f == vk::TRUE)
    }
}

// SAFETY: `CooperativeMatrix2Features` starts with `sType` and `pNext` like every Vulkan
// structure (`#[repr(C)]`), and the specification lists it as extending both.
unsafe impl vk::ExtendsPhysicalDeviceFeatures2 for CooperativeMatrix2Features {}
// SAFETY: as above.
unsafe impl vk::ExtendsDeviceCreateInfo for CooperativeMatrix2Features {}

/// `VkPhysicalDeviceShaderBfloat16FeaturesKHR` (`VK_KHR_shader_bfloat16`), newer than ash's
/// headers: the same layout as the C structure.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ShaderBfloat16Features {
    s_type: vk::StructureType,
    p_next: *mut std::ffi::c_void,
    shader_bfloat16_type: vk::Bool32,
    shader_bfloat16_dot_product: vk::Bool32,
    shader_bfloat16_cooperative_matrix: vk::Bool32,
}

/// The extension that [`ShaderBfloat16Features`] belongs to.
const SHADER_BFLOAT16_NAME: &CStr = c"VK_KHR_shader_bfloat16";

impl Default for ShaderBfloat16Features {
    fn default() -> Self {
        Self {
            // VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_BFLOAT16_FEATURES_KHR
            s_type: vk::StructureType::from_raw(1_000_141_000),
            p_next: std::ptr::null_mut(),
            shader_bfloat16_type: vk::FALSE,
            shader_bfloat16_dot_product: vk::FALSE,
            shader_bfloat16_cooperative_matrix: vk::FALSE,
        }
    }
}

// SAFETY: `ShaderBfloat16Features` starts with `sType` and `pNext` like every Vulkan
// structure (`#[repr(C)]`), and the specification lists it as extending both.
unsafe impl vk::ExtendsPhysicalDeviceFeatures2 for ShaderBfloat16Features {}
// SAFETY: as above.
unsafe impl vk::ExtendsDeviceCreateInfo for ShaderBfloat16Features {}

/// A physical device with everything needed to judge and open it.
struct Candidate {
    index: usize,
    physical: vk::PhysicalDevice,
    rank: u32,
    queue_family: Option<u32>,
    extensions: Vec<String>,
    features: VulkanFeatures,
    optional: Optional,
}

impl Candidate {
    fn has(&self, ext: &CStr) -> bool {
        let ext = ext.to_string_lossy();
        self.extensions.iter().any(|e| *e == ext)
    }

    /// Why this device cannot run Tessera's shaders, if it cannot.
    fn unusable(&self) -> Option<String> {
        let f = &self.features;
        if f.api_version < (1, 1, 0) {
            return Some("Vulkan 1.1 or newer is needed".to_string());
        }
        if self.queue_family.is_none() {
            return Some("no compute queue".to_string());
        }
        if !self.has(ash::khr::push_descriptor::NAME) {
            return Some("VK_KHR_push_descriptor is missing".to_string());
        }
        if !f.subgroup_arithmetic {
            return Some("no subgroup arithmetic in compute shaders".to_string());
        }
        None
    }
}

/// `VkCooperativeMatrixFlexibleDimensionsPropertiesNV` (`VK_NV_cooperative_matrix2`), newer
/// than ash's headers: the same layout as the C structure.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct FlexibleDimensionsProperties {
    s_type: vk::StructureType,
    p_next: *mut std::ffi::c_void,
    m_granularity: u32,
    n_granularity: u32,
    k_granularity: u32,
    a_type: vk::ComponentTypeKHR,
    b_type: vk::ComponentTypeKHR,
    c_type: vk::ComponentTypeKHR,
    result_type: vk::ComponentTypeKHR,
    saturating_accumulation: vk::Bool32,
    scope: vk::ScopeKHR,
    workgroup_invocations: u32,
}

/// `vkGetPhysicalDeviceCooperativeMatrixFlexibleDimensionsPropertiesNV`.
type FlexibleDimensionsFn = unsafe extern "system" fn(
    vk::PhysicalDevice,
    *mut u32,
    *mut FlexibleDimensionsProperties,
) -> vk::Result;

/// The device's flexible-dimension configurations (empty where the loader does not offer the
/// command).
///
/// # Safety
/// `physical` must come from `instance`, which must be live and offer `VK_NV_cooperative_matrix2`
/// on that device.
unsafe fn flexible_configs(
    entry: &ash::Entry,
    instance: &ash::Instance,
    physical: vk::PhysicalDevice,
) -> Result<Vec<FlexibleMatrixConfig>> {
    let name = c"vkGetPhysicalDeviceCooperativeMatrixFlexibleDimensionsPropertiesNV";
    // SAFETY: the instance is live; the name is a NUL-terminated command name.
    let Some(command) = (unsafe { entry.get_instance_proc_addr(instance.handle(), name.as_ptr()) })
    else {
        return Ok(Vec::new());
    };
    // SAFETY: the loader returned this command under its name, whose C signature this is.
    let command: FlexibleDimensionsFn = unsafe { std::mem::transmute(command) };
    let empty = FlexibleDimensionsProperties {
        // VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_FLEXIBLE_DIMENSIONS_PROPERTIES_NV
        s_type: vk::StructureType::from_raw(1_000_593_001),
        p_next: std::ptr::null_mut(),
        m_granularity: 0,
        n_granularity: 0,
        k_granularity: 0,
        a_type: vk::ComponentTypeKHR::FLOAT32,
        b_type: vk::ComponentTypeKHR::FLOAT32,
        c_type: vk::ComponentTypeKHR::FLOAT32,
        result_type: vk::ComponentTypeKHR::FLOAT32,
        saturating_accumulation: vk::FALSE,
        scope: vk::ScopeKHR::SUBGROUP,
        workgroup_invocations: 0,
    };
    let mut count = 0u32;
    // SAFETY: a count query with a null array.
    unsafe { command(physical, &mut count, std::ptr::null_mut()) }
        .result()
        .map_err(|e| vk_error("listing flexible cooperative matrix configurations", e))?;
    let mut props = vec![empty; count as usize];
    // SAFETY: `props` holds `count` initialised structures of the right type.
    let r = unsafe { command(physical, &mut count, props.as_mut_ptr()) };
    if r != vk::Result::SUCCESS && r != vk::Result::INCOMPLETE {
        return Err(vk_error(
            "listing flexible cooperative matrix configurations",
            r,
        ));
    }
    props.truncate(count as usize);
    Ok(props
        .iter()
        .map(|p| FlexibleMatrixConfig {
            m_granularity: p.m_granularity,
            n_granularity: p.n_granularity,
            k_granularity: p.k_granularity,
            a: MatrixComponent::from_vk(p.a_type),
            b: MatrixComponent::from_vk(p.b_type),
            c: MatrixComponent::from_vk(p.c_type),
            result: MatrixComponent::from_vk(p.result_type),
            workgroup_scope: p.scope == vk::ScopeKHR::WORKGROUP,
            workgroup_invocations: p.workgroup_invocations,
        })
        .collect())
}

/// Reads the properties and features of one physical device.
///
/// # Safety
/// `physical` must come from `instance`, which must be live.
unsafe fn inspect(
    entry: &ash::Entry,
    instance: &ash::Instance,
    index: usize,
    physical: vk::PhysicalDevice,
) -> Result<Candidate> {
    let err = |what: &'static str| move |e: vk::Result| vk_error(what, e);
    // SAFETY (whole function): the caller guarantees `physical` belongs to the live `instance`;
    // every structure passed is valid and lives across the call that fills it.
    let props = instance.get_physical_device_properties(physical);
    let api = props.api_version;
    let api_version = (
        vk::api_version_major(api),
        vk::api_version_minor(api),
        vk::api_version_patch(api),
    );
    let extensions: Vec<String> = instance
        .enumerate_device_extension_properties(physical)
        .map_err(err("listing device extensions"))?
        .iter()
        .map(|e| fixed_str(&e.extension_name))
        .collect();
    let has = |name: &CStr| {
        let name = name.to_string_lossy();
        extensions.iter().any(|e| *e == name)
    };
    let v12 = api_version >= (1, 2, 0);
    let v13 = api_version >= (1, 3, 0);
    let queue_family = instance
        .get_physical_device_queue_family_properties(physical)
        .iter()
        .enumerate()
        .filter(|(_, q)| q.queue_flags.contains(vk::QueueFlags::COMPUTE) && q.queue_count > 0)
        // A compute-only family (asynchronous compute) first, then any with compute.
        .min_by_key(|(_, q)| q.queue_flags.contains(vk::QueueFlags::GRAPHICS))
        .map(|(i, _)| i as u32);

    let l = &props.limits;
    let mut features = VulkanFeatures {
        name: fixed_str(&props.device_name),
        device_type: device_type_name(props.device_type).to_string(),
        api_version,
        driver: None,
        subgroup_size: 1,
        min_subgroup_size: 1,
        max_subgroup_size: 1,
        subgroup_arithmetic: false,
        subgroup_shuffle: false,
        subgroup_size_control: false,
        compute_units: None,
        max_shared_memory_bytes: l.max_compute_shared_memory_size,
        max_workgroup_invocations: l.max_compute_work_group_invocations,
        max_workgroup_size: l.max_compute_work_group_size,
        max_workgroup_count: l.max_compute_work_group_count,
        max_storage_buffer_range: l.max_storage_buffer_range,
        min_storage_buffer_offset_alignment: l.min_storage_buffer_offset_alignment,
        shader_float16: false,
        shader_int8: false,
        shader_int16: false,
        shader_int64: false,
        storage_buffer_8bit: false,
        storage_buffer_16bit: false,
        integer_dot_product: has(ash::khr::shader_integer_dot_product::NAME),
        bfloat16: false,
        cooperative_matrix: false,
        cooperative_matrix_shapes: Vec::new(),
        cooperative_matrix2_nv: false,
        cooperative_matrix_flexible: Vec::new(),
        pipeline_statistics: false,
        max_memory_allocation_size: u64::MAX,
        max_buffer_size: None,
        largest_heap_bytes: {
            let memory = instance.get_physical_device_memory_properties(physical);
            memory.memory_heaps[..memory.memory_heap_count as usize]
                .iter()
                .map(|h| h.size)
                .max()
                .unwrap_or(0)
        },
    };
    let mut optional = Optional::default();
    let rank = device_type_rank(props.device_type);
    if api_version < (1, 1, 0) {
        return Ok(Candidate {
            index,
            physical,
            rank,
            queue_family,
            extensions,
            features,
            optional,
        });
    }

    // Properties (Vulkan 1.1 core: properties2 and subgroup properties).
    let has_size_control = v13 || has(ash::ext::subgroup_size_control::NAME);
    let has_driver_props = v12 || has(ash::khr::driver_properties::NAME);
    let mut subgroup = vk::PhysicalDeviceSubgroupProperties::default();
    let mut size_control = vk::PhysicalDeviceSubgroupSizeControlProperties::default();
    let mut driver = vk::PhysicalDeviceDriverProperties::default();
    let mut maintenance3 = vk::PhysicalDeviceMaintenance3Properties::default();
    let mut maintenance4 = vk::PhysicalDeviceMaintenance4Properties::default();
    let has_sm_builtins = has(ash::nv::shader_sm_builtins::NAME);
    let has_amd_cores = has(ash::amd::shader_core_properties::NAME);
    let mut sm_builtins = vk::PhysicalDeviceShaderSMBuiltinsPropertiesNV::default();
    let mut amd_cores = vk::PhysicalDeviceShaderCorePropertiesAMD::default();
    {
        let mut props2 = vk::PhysicalDeviceProperties2::default()
            .push_next(&mut subgroup)
            .push_next(&mut maintenance3);
        if v13 {
            props2 = props2.push_next(&mut maintenance4);
        }
        if has_size_control {
            props2 = props2.push_next(&mut size_control);
        }
        if has_driver_props {
            props2 = props2.push_next(&mut driver);
        }
        if has_sm_builtins {
            props2 = props2.push_next(&mut sm_builtins);
        }
        if has_amd_cores {
            props2 = props2.push_next(&mut amd_cores);
        }
        instance.get_physical_device_properties2(physical, &mut props2);
    }
    features.compute_units = if has_sm_builtins && sm_builtins.shader_sm_count > 0 {
        Some(sm_builtins.shader_sm_count)
    } else if has_amd_cores {
        Some(
            amd_cores.shader_engine_count
                * amd_cores.shader_arrays_per_engine_count
                * amd_cores.compute_units_per_shader_array,
        )
        .filter(|&n| n > 0)
    } else {
        None
    };
    features.max_memory_allocation_size = maintenance3.max_memory_allocation_size;
    if v13 {
        features.max_buffer_size = Some(maintenance4.max_buffer_size);
    }
    features.subgroup_size = subgroup.subgroup_size;
    features.min_subgroup_size = subgroup.subgroup_size;
    features.max_subgroup_size = subgroup.subgroup_size;
    let compute = subgroup
        .supported_stages
        .contains(vk::ShaderStageFlags::COMPUTE);
    features.subgroup_arithmetic = compute
        && subgroup
            .supported_operations
            .contains(vk::SubgroupFeatureFlags::ARITHMETIC);
    features.subgroup_shuffle = compute
        && subgroup
            .supported_operations
            .contains(vk::SubgroupFeatureFlags::SHUFFLE);
    if has_driver_props {
        features.driver = Some(format!(
            "{} {}",
            fixed_str(&driver.driver_name),
            fixed_str(&driver.driver_info)
        ));
    }

    // Features: the same chain is used to enable them (see `open`).
    let has_8bit = v12 || has(ash::khr::_8bit_storage::NAME);
    let has_f16i8 = v12 || has(ash::khr::shader_float16_int8::NAME);
    let has_coop = has(ash::khr::cooperative_matrix::NAME);
    let has_bf16 = has(SHADER_BFLOAT16_NAME);
    let has_coop2 = has(COOPERATIVE_MATRIX2_NAME);
    let has_executable = has(ash::khr::pipeline_executable_properties::NAME);
    let mut storage16 = vk::PhysicalDevice16BitStorageFeatures::default();
    let mut storage8 = vk::PhysicalDevice8BitStorageFeatures::default();
    let mut f16i8 = vk::PhysicalDeviceShaderFloat16Int8Features::default();
    let mut size_control_f = vk::PhysicalDeviceSubgroupSizeControlFeatures::default();
    let mut coop = vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default();
    let mut bf16 = ShaderBfloat16Features::default();
    let mut coop2 = CooperativeMatrix2Features::default();
    let mut executable = vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR::default();
    let base = {
        let mut f2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut storage16);
        if has_8bit {
            f2 = f2.push_next(&mut storage8);
        }
        if has_f16i8 {
            f2 = f2.push_next(&mut f16i8);
        }
        if has_size_control {
            f2 = f2.push_next(&mut size_control_f);
        }
        if has_coop {
            f2 = f2.push_next(&mut coop);
        }
        if has_bf16 {
            f2 = f2.push_next(&mut bf16);
        }
        if has_coop2 {
            f2 = f2.push_next(&mut coop2);
        }
        if has_executable {
            f2 = f2.push_next(&mut executable);
        }
        instance.get_physical_device_features2(physical, &mut f2);
        f2.features
    };
    optional.storage16 = storage16.storage_buffer16_bit_access == vk::TRUE;
    optional.storage8 = has_8bit && storage8.storage_buffer8_bit_access == vk::TRUE;
    optional.float16 = has_f16i8 && f16i8.shader_float16 == vk::TRUE;
    optional.int8 = has_f16i8 && f16i8.shader_int8 == vk::TRUE;
    optional.int16 = base.shader_int16 == vk::TRUE;
    optional.int64 = base.shader_int64 == vk::TRUE;
    optional.size_control = has_size_control && size_control_f.subgroup_size_control == vk::TRUE;
    optional.full_subgroups = has_size_control && size_control_f.compute_full_subgroups == vk::TRUE;
    optional.coop_matrix = has_coop && coop.cooperative_matrix == vk::TRUE;
    // Only as a pair: the shaders that use bf16 use it in cooperative matrices.
    optional.bfloat16 = has_bf16
        && optional.coop_matrix
        && bf16.shader_bfloat16_type == vk::TRUE
        && bf16.shader_bfloat16_cooperative_matrix == vk::TRUE;
    features.bfloat16 = optional.bfloat16;
    optional.coop_matrix2 = has_coop2 && optional.coop_matrix && coop2.usable();
    features.cooperative_matrix2_nv = optional.coop_matrix2;
    optional.executable_info = has_executable && executable.pipeline_executable_info == vk::TRUE;
    features.pipeline_statistics = optional.executable_info;
    features.storage_buffer_16bit = optional.storage16;
    features.storage_buffer_8bit = optional.storage8;
    features.shader_float16 = optional.float16;
    features.shader_int8 = optional.int8;
    features.shader_int16 = optional.int16;
    features.shader_int64 = optional.int64;
    features.subgroup_size_control = optional.size_control && optional.full_subgroups;
    if optional.size_control
        && size_control
            .required_subgroup_size_stages
            .contains(vk::ShaderStageFlags::COMPUTE)
    {
        features.min_subgroup_size = size_control.min_subgroup_size.max(1);
        features.max_subgroup_size = size_control.max_subgroup_size.max(1);
    }
    if optional.coop_matrix {
        let coop_instance = ash::khr::cooperative_matrix::Instance::new(entry, instance);
        let shapes = coop_instance
            .get_physical_device_cooperative_matrix_properties(physical)
            .map_err(err("listing cooperative matrix shapes"))?;
        features.cooperative_matrix = true;
        features.cooperative_matrix_shapes = shapes
            .iter()
            .map(|s| CooperativeMatrixShape {
                m: s.m_size,
                n: s.n_size,
                k: s.k_size,
                a: MatrixComponent::from_vk(s.a_type),
                b: MatrixComponent::from_vk(s.b_type),
                c: MatrixComponent::from_vk(s.c_type),
                result: MatrixComponent::from_vk(s.result_type),
                saturating_accumulation: s.saturating_accumulation == vk::TRUE,
                subgroup_scope: s.scope == vk::ScopeKHR::SUBGROUP,
            })
            .collect();
    }
    if optional.coop_matrix2 {
        features.cooperative_matrix_flexible = flexible_configs(entry, instance, physical)?;
    }
    Ok(Candidate {
        index,
        physical,
        rank,
        queue_family,
        extensions,
        features,
        optional,
    })
}

/// Picks the device: the one `wanted` (`TESSERA_VULKAN_DEVICE`) names, else the best usable
/// one.
fn choose<'a>(candidates: &'a [Candidate], wanted: Option<&str>) -> Result<&'a Candidate> {
    let list = || {
        candidates
            .iter()
            .map(|c| format!("{}: {}", c.index, c.features.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(wanted) = wanted {
        let wanted = wanted.trim();
        let found = match wanted.parse::<usize>() {
            Ok(i) => candidates.iter().find(|c| c.index == i),
            Err(_) => {
                let w = wanted.to_lowercase();
                candidates
                    .iter()
                    .find(|c| c.features.name.to_lowercase().contains(&w))
            }
        };
        let c = found.ok_or_else(|| {
            unavailable(format!(
                "{DEVICE_ENV}={wanted:?} matches no Vulkan device (found: {})",
                list()
            ))
        })?;
        if let Some(why) = c.unusable() {
            return Err(unavailable(format!(
                "{DEVICE_ENV} picks {}, which cannot be used: {why}",
                c.features.name
            )));
        }
        return Ok(c);
    }
    candidates
        .iter()
        .filter(|c| c.unusable().is_none())
        .min_by_key(|c| (c.rank, c.index))
        .ok_or_else(|| {
            let why = candidates
                .iter()
                .map(|c| format!("{}: {}", c.features.name, c.unusable().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join("; ");
            unavailable(format!("no usable Vulkan device ({why})"))
        })
}

/// The Vulkan instance and the opened device with its compute queue. Shared (in an `Arc`) by the
/// backend, its pipelines and every buffer it allocates, so that it is destroyed last.
///
/// The raw handles are public for the device API: a caller records Tessera's dispatches into its
/// own command buffers, allocated from a pool of [`VulkanContext::queue_family`] on
/// [`VulkanContext::device`], and submits them through [`VulkanContext::queue`].
pub struct VulkanContext {
    entry: ash::Entry,
    instance: ash::Instance,
    physical: vk::PhysicalDevice,
    device: ash::Device,
    push_descriptor: ash::khr::push_descriptor::Device,
    /// `VK_KHR_pipeline_executable_properties`, where [`VulkanSettings::pipeline_statistics`]
    /// asked for it and the device has it.
    pipeline_statistics: Option<ash::khr::pipeline_executable_properties::Device>,
    queue: Mutex<vk::Queue>,
    queue_family: u32,
    memory: vk::PhysicalDeviceMemoryProperties,
    features: VulkanFeatures,
    index: usize,
    settings: VulkanSettings,
}

impl std::fmt::Debug for VulkanContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VulkanContext")
            .field("device", &self.features.name)
            .field("index", &self.index)
            .field("queue_family", &self.queue_family)
            .finish_non_exhaustive()
    }
}

impl VulkanContext {
    /// Loads the Vulkan loader, creates an instance, chooses a device (see the module
    /// documentation) and opens it with one compute queue. Never panics: no loader, no device or
    /// no usable device is [`Error::BackendUnavailable`] with the reason; a failing call is
    /// [`Error::Driver`] (with the `VkResult`). Settings come from the environment
    /// ([`VulkanSettings::from_env`]), read now.
    pub fn new() -> Result<Self> {
        Self::with_settings(VulkanSettings::from_env())
    }

    /// [`VulkanContext::new`] with explicit settings (the environment is not read).
    pub fn with_settings(settings: VulkanSettings) -> Result<Self> {
        OPEN_ATTEMPTS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `Entry::load` dlopens the system's Vulkan loader (libvulkan.so.1) and reads its
        // entry points; the loader is built to be loaded this way.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| {
            unavailable(format!(
                "no Vulkan loader ({e}): install it (Debian: libvulkan1) and a driver"
            ))
        })?;
        // SAFETY: `entry` holds a loaded loader; the call has no other preconditions.
        let loader_version = match unsafe { entry.try_enumerate_instance_version() } {
            Ok(Some(v)) => v,
            Ok(None) => vk::API_VERSION_1_0,
            Err(e) => return Err(unavailable(format!("the Vulkan loader failed: {e}"))),
        };
        if loader_version < vk::API_VERSION_1_1 {
            return Err(unavailable(
                "the Vulkan loader is older than 1.1; Tessera needs Vulkan 1.1".to_string(),
            ));
        }
        let app = vk::ApplicationInfo::default()
            .application_name(c"tessera")
            .engine_name(c"tessera")
            .api_version(loader_version.min(vk::API_VERSION_1_3));
        let create = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: `create` and `app` are valid and live across the call.
        let instance = unsafe { entry.create_instance(&create, None) }.map_err(|e| {
            unavailable(format!(
                "no Vulkan instance could be created ({e}): no driver (ICD) installed?"
            ))
        })?;
        // From here on the instance must be destroyed on every error path.
        // SAFETY: `instance` is live and destroyed only here, when opening fails.
        Self::open(entry.clone(), instance.clone(), settings).inspect_err(|_| unsafe {
            instance.destroy_instance(None);
        })
    }

    fn open(entry: ash::Entry, instance: ash::Instance, settings: VulkanSettings) -> Result<Self> {
        // SAFETY: `instance` is live.
        let physicals = unsafe { instance.enumerate_physical_devices() }
            .map_err(|e| vk_error("listing the physical devices", e))?;
        if physicals.is_empty() {
            return Err(unavailable(
                "the Vulkan loader reports no device (no ICD installed?)".to_string(),
            ));
        }
        let mut candidates = Vec::new();
        for (i, &pd) in physicals.iter().enumerate() {
            // SAFETY: `pd` was just listed by the live `instance`.
            candidates.push(unsafe { inspect(&entry, &instance, i, pd) }?);
        }
        let chosen = choose(&candidates, settings.device.as_deref())?;
        let o = chosen.optional;
        let queue_family = chosen.queue_family.unwrap_or(0);

        let priorities = [1.0f32];
        let queue_info = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(queue_family)
            .queue_priorities(&priorities)];
        let v12 = chosen.features.api_version >= (1, 2, 0);
        let v13 = chosen.features.api_version >= (1, 3, 0);
        let mut ext_names: Vec<*const c_char> = vec![ash::khr::push_descriptor::NAME.as_ptr()];
        let mut want = |name: &'static CStr, needed: bool| {
            if needed && chosen.has(name) {
                ext_names.push(name.as_ptr());
            }
        };
        want(ash::khr::_8bit_storage::NAME, o.storage8 && !v12);
        want(
            ash::khr::shader_float16_int8::NAME,
            (o.float16 || o.int8) && !v12,
        );
        want(
            ash::ext::subgroup_size_control::NAME,
            o.size_control && !v13,
        );
        want(ash::khr::cooperative_matrix::NAME, o.coop_matrix);
        want(SHADER_BFLOAT16_NAME, o.bfloat16);
        want(COOPERATIVE_MATRIX2_NAME, o.coop_matrix2);
        let statistics = settings.pipeline_statistics && o.executable_info;
        if settings.pipeline_statistics && !statistics {
            log::warn!(
                "{PIPELINE_STATS_ENV}: the device has no VK_KHR_pipeline_executable_properties"
            );
        }
        want(ash::khr::pipeline_executable_properties::NAME, statistics);

        let base = vk::PhysicalDeviceFeatures::default()
            .shader_int16(o.int16)
            .shader_int64(o.int64);
        let mut storage16 = vk::PhysicalDevice16BitStorageFeatures::default()
            .storage_buffer16_bit_access(o.storage16);
        let mut storage8 =
            vk::PhysicalDevice8BitStorageFeatures::default().storage_buffer8_bit_access(o.storage8);
        let mut f16i8 = vk::PhysicalDeviceShaderFloat16Int8Features::default()
            .shader_float16(o.float16)
            .shader_int8(o.int8);
        let mut size_control = vk::PhysicalDeviceSubgroupSizeControlFeatures::default()
            .subgroup_size_control(o.size_control)
            .compute_full_subgroups(o.full_subgroups);
        let mut coop =
            vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default().cooperative_matrix(true);
        let mut bf16 = ShaderBfloat16Features {
            shader_bfloat16_type: vk::TRUE,
            shader_bfloat16_cooperative_matrix: vk::TRUE,
            ..Default::default()
        };
        let mut features2 = vk::PhysicalDeviceFeatures2::default()
            .features(base)
            .push_next(&mut storage16);
        if o.storage8 {
            features2 = features2.push_next(&mut storage8);
        }
        if o.float16 || o.int8 {
            features2 = features2.push_next(&mut f16i8);
        }
        if o.size_control {
            features2 = features2.push_next(&mut size_control);
        }
        if o.coop_matrix {
            features2 = features2.push_next(&mut coop);
        }
        if o.bfloat16 {
            features2 = features2.push_next(&mut bf16);
        }
        // Every feature `CooperativeMatrix2Features::usable` checked (block loads left off).
        let mut coop2 = CooperativeMatrix2Features {
            workgroup_scope: vk::TRUE,
            flexible_dimensions: vk::TRUE,
            reductions: vk::TRUE,
            conversions: vk::TRUE,
            per_element_operations: vk::TRUE,
            tensor_addressing: vk::TRUE,
            ..Default::default()
        };
        if o.coop_matrix2 {
            features2 = features2.push_next(&mut coop2);
        }
        let mut executable = vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR::default()
            .pipeline_executable_info(true);
        if statistics {
            features2 = features2.push_next(&mut executable);
        }
        let create = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queue_info)
            .enabled_extension_names(&ext_names)
            .push_next(&mut features2);
        // SAFETY: `chosen.physical` belongs to `instance`; every structure in `create` is valid
        // and lives across the call; only supported extensions and features are enabled.
        let device = unsafe { instance.create_device(chosen.physical, &create, None) }
            .map_err(|e| vk_error("creating the Vulkan device", e))?;
        // SAFETY: the queue family and index were requested in `create`.
        let queue = unsafe { device.get_device_queue(queue_family, 0) };
        let push_descriptor = ash::khr::push_descriptor::Device::new(&instance, &device);
        let pipeline_statistics = statistics
            .then(|| ash::khr::pipeline_executable_properties::Device::new(&instance, &device));
        // SAFETY: `chosen.physical` belongs to the live `instance`.
        let memory = unsafe { instance.get_physical_device_memory_properties(chosen.physical) };
        Ok(Self {
            physical: chosen.physical,
            features: chosen.features.clone(),
            index: chosen.index,
            entry,
            instance,
            device,
            push_descriptor,
            pipeline_statistics,
            queue: Mutex::new(queue),
            queue_family,
            memory,
            settings,
        })
    }

    /// The settings this context was opened with.
    pub fn settings(&self) -> &VulkanSettings {
        &self.settings
    }

    /// How many times this process has tried to open a Vulkan context so far (successfully or
    /// not): a diagnostic for code that should open the device once.
    pub fn open_attempts() -> usize {
        OPEN_ATTEMPTS.load(Ordering::Relaxed)
    }

    /// What the device offers.
    pub fn features(&self) -> &VulkanFeatures {
        &self.features
    }

    /// The device's index in the loader's order (what `TESSERA_VULKAN_DEVICE` takes).
    pub fn device_index(&self) -> usize {
        self.index
    }

    /// The loader's entry points.
    pub fn entry(&self) -> &ash::Entry {
        &self.entry
    }

    /// The instance.
    pub fn instance(&self) -> &ash::Instance {
        &self.instance
    }

    /// The physical device.
    pub fn physical_device(&self) -> vk::PhysicalDevice {
        self.physical
    }

    /// The logical device: callers allocate their command pools and buffers on it.
    pub fn device(&self) -> &ash::Device {
        &self.device
    }

    /// The queue family of [`VulkanContext::queue`] (compute-capable).
    pub fn queue_family(&self) -> u32 {
        self.queue_family
    }

    /// The compute queue, locked: Vulkan requires submissions to a queue to be externally
    /// synchronized, and the host API submits through the same lock.
    pub fn queue(&self) -> MutexGuard<'_, vk::Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn push_descriptor(&self) -> &ash::khr::push_descriptor::Device {
        &self.push_descriptor
    }

    /// The pipeline-statistics functions, where [`VulkanSettings::pipeline_statistics`] enabled
    /// them.
    pub(crate) fn pipeline_statistics(
        &self,
    ) -> Option<&ash::khr::pipeline_executable_properties::Device> {
        self.pipeline_statistics.as_ref()
    }

    pub(crate) fn memory_properties(&self) -> &vk::PhysicalDeviceMemoryProperties {
        &self.memory
    }
}

impl Drop for VulkanContext {
    fn drop(&mut self) {
        // SAFETY: everything created on the device (pipelines, buffers, pools) holds an `Arc` of
        // this context and is destroyed before it; waiting for idle first makes sure no work
        // still uses them.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}
