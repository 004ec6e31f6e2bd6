//! Compute pipelines: the embedded shaders ([`Shader`]), their typed specialization constants
//! ([`Specialization`]), their pipelines with layouts ([`Pipeline`]), a cache keyed by shader
//! name and specialization constants ([`PipelineCache`]), and recording a dispatch into a
//! command buffer.
//!
//! Conventions every shader follows, so that one pipeline layout shape fits all:
//! - set 0 holds `storage_buffers` storage buffers at bindings `0..storage_buffers`, bound with
//!   push descriptors (`VK_KHR_push_descriptor`): nothing to allocate or free per dispatch, and
//!   recording into a caller's command buffer leaves no descriptor set whose lifetime the caller
//!   would have to manage;
//! - one push-constant block of `push_constant_bytes` (32-bit words) holds the shapes;
//! - specialization constants are 32-bit; each shader's are a typed struct (a
//!   [`Specialization`], the `S` of [`Shader<S>`]) whose [`Specialization::constants`] is the one
//!   place that gives each field its `constant_id` (or `local_size_x_id`, the workgroup size
//!   where the shader lets the host choose it). A test (`tests/spirv.rs`) checks those ids and
//!   names against the declarations of every shader source.

use crate::device::VulkanContext;
use crate::memory::BufferRange;
use crate::vk_error;
use ash::vk;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use tessera_core::{BackendKind, Error, Result};

/// A development aid: where set, pipelines are built from `<dir>/<name>.spv` instead of the
/// embedded SPIR-V for every shader that has such a file (so that shader variants can be tried on
/// a GPU machine without rebuilding the Rust side). Read once when the backend is opened
/// ([`crate::VulkanSettings::spirv_dir`]); each use is logged (`log`, level info). The file must
/// be a shader with the same bindings, push constants and resources as the embedded one.
pub const SPIRV_DIR_ENV: &str = "TESSERA_VULKAN_SPIRV_DIR";

/// The SPIR-V of `name` from the settings' SPIR-V folder, if one is set and holds the file.
fn spirv_override(dir: Option<&std::path::Path>, name: &str) -> Result<Option<Vec<u8>>> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let path = dir.join(format!("{name}.spv"));
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::Device {
        backend: BackendKind::Vulkan,
        message: format!("{SPIRV_DIR_ENV}: cannot read {}: {e}", path.display()),
    })?;
    log::info!("{SPIRV_DIR_ENV}: {name} from {}", path.display());
    Ok(Some(bytes))
}

/// A compute shader embedded in the crate (SPIR-V from `shaders/spv/`, see the README's
/// "Vulkan shaders" section), with what its pipeline layout needs; `S` is the typed struct of
/// its specialization constants ([`PipelineCache::get`] takes only that type for this shader).
#[derive(Clone, Copy, Debug)]
pub struct Shader<S: Specialization> {
    /// The name: the `.spv` file's stem (e.g. `fp8_gemm`).
    pub name: &'static str,
    /// The SPIR-V module.
    pub spirv: &'static [u8],
    /// Storage buffers at bindings `0..storage_buffers` of set 0.
    pub storage_buffers: u32,
    /// Size of the push-constant block in bytes.
    pub push_constant_bytes: u32,
    /// The type of its specialization constants (no data).
    pub specialization: PhantomData<fn() -> S>,
}

impl<S: Specialization> Shader<S> {
    /// The shader without its specialization type, for lists of every shader: name, SPIR-V and
    /// the constants of `S::default()` (the defaults its source declares).
    pub fn describe(&self) -> EmbeddedShader {
        EmbeddedShader {
            name: self.name,
            spirv: self.spirv,
            constants: S::default().constants(),
        }
    }
}

/// An embedded shader with its specialization type erased ([`Shader::describe`]); what
/// [`crate::shaders::all`] lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedShader {
    /// [`Shader::name`].
    pub name: &'static str,
    /// [`Shader::spirv`].
    pub spirv: &'static [u8],
    /// Its specialization constants with the default values its source declares.
    pub constants: Vec<SpecConstant>,
}

/// What one workgroup of a shader uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShaderResources {
    /// Invocations per workgroup.
    pub invocations: u32,
    /// Shared memory in bytes.
    pub shared_memory_bytes: u32,
}

/// One specialization constant of a shader: its id, the name the GLSL source declares it
/// under, and its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpecConstant {
    /// The id: `layout(constant_id = ID)`, or `layout(local_size_x_id = ID)` for the workgroup
    /// size.
    pub id: u32,
    /// The constant's name in the source (`layout(constant_id = 1) const uint FP8` gives
    /// `FP8`); [`SpecConstant::LOCAL_SIZE_X`] for the workgroup size.
    pub glsl_name: &'static str,
    /// Its value (32 bits; booleans as 0 or 1).
    pub value: u32,
}

impl SpecConstant {
    /// The [`SpecConstant::glsl_name`] of the workgroup size (`local_size_x_id`).
    pub const LOCAL_SIZE_X: &'static str = "local_size_x_id";

    /// `layout(constant_id = id) const uint glsl_name` = `value`.
    pub const fn new(id: u32, glsl_name: &'static str, value: u32) -> Self {
        Self {
            id,
            glsl_name,
            value,
        }
    }

    /// `layout(local_size_x_id = id)`: the workgroup size `value`.
    pub const fn local_size_x(id: u32, value: u32) -> Self {
        Self::new(id, Self::LOCAL_SIZE_X, value)
    }
}

/// The specialization constants of a shader (or of the builds of one source, which share
/// them) as a typed struct: each field names a constant, [`Specialization::constants`] gives
/// every field its id, and the resources follow from the fields.
pub trait Specialization: Copy + std::fmt::Debug + Default + Send + Sync + 'static {
    /// Every constant with its id, GLSL name and value: the one place that ties the struct to
    /// the shader's `constant_id`s (checked against the sources by `tests/spirv.rs`).
    /// `Self::default()` gives the defaults the shader source declares.
    fn constants(&self) -> Vec<SpecConstant>;

    /// Invocations per workgroup and shared memory in bytes with these constants, checked
    /// against the device's limits before the pipeline is created.
    fn resources(&self) -> ShaderResources;
}

/// A cache key: the shader and the values of its specialization constants.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    /// [`Shader::name`].
    pub shader: &'static str,
    /// `(constant id, value)` of every specialization constant, in
    /// [`Specialization::constants`]' order.
    pub constants: Vec<(u32, u32)>,
}

/// What [`Pipeline::new`] takes of a shader and its specialization (no type parameter).
struct PipelineSource<'a> {
    name: &'static str,
    spirv: &'static [u8],
    storage_buffers: u32,
    push_constant_bytes: u32,
    constants: &'a [SpecConstant],
    resources: ShaderResources,
}

/// A compute pipeline with its layouts. Destroyed on drop (the cache keeps it until the backend
/// goes).
pub struct Pipeline {
    ctx: Arc<VulkanContext>,
    key: PipelineKey,
    pipeline: vk::Pipeline,
    layout: vk::PipelineLayout,
    set_layout: vk::DescriptorSetLayout,
    storage_buffers: u32,
    push_constant_bytes: u32,
    statistics: Vec<(String, String)>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("key", &self.key).finish()
    }
}

fn device_error(message: String) -> Error {
    Error::Device {
        backend: BackendKind::Vulkan,
        message,
    }
}

impl Pipeline {
    fn new(ctx: &Arc<VulkanContext>, shader: PipelineSource<'_>, key: PipelineKey) -> Result<Self> {
        let f = ctx.features();
        let res = shader.resources;
        if res.invocations > f.max_workgroup_invocations {
            return Err(Error::Unsupported {
                op: "vulkan pipeline",
                backend: BackendKind::Vulkan,
                reason: format!(
                    "{} needs {} invocations per workgroup, the device allows {}",
                    shader.name, res.invocations, f.max_workgroup_invocations
                ),
            });
        }
        if res.shared_memory_bytes > f.max_shared_memory_bytes {
            return Err(Error::Unsupported {
                op: "vulkan pipeline",
                backend: BackendKind::Vulkan,
                reason: format!(
                    "{} needs {} bytes of shared memory, the device has {}",
                    shader.name, res.shared_memory_bytes, f.max_shared_memory_bytes
                ),
            });
        }
        let spirv = spirv_override(ctx.settings().spirv_dir.as_deref(), shader.name)?;
        let bytes = spirv.as_deref().unwrap_or(shader.spirv);
        let code = ash::util::read_spv(&mut std::io::Cursor::new(bytes))
            .map_err(|e| device_error(format!("reading the SPIR-V of {}: {e}", shader.name)))?;
        let device = ctx.device();
        let module_info = vk::ShaderModuleCreateInfo::default().code(&code);
        // SAFETY: `code` is a SPIR-V module produced by glslang (the embedded ones are checked
        // against the manifest by the tests; an override is the developer's own build of the
        // same source); the module is destroyed below once the pipeline exists.
        let module = unsafe { device.create_shader_module(&module_info, None) }
            .map_err(|e| vk_error(&format!("creating the shader module {}", shader.name), e))?;

        let bindings: Vec<vk::DescriptorSetLayoutBinding> = (0..shader.storage_buffers)
            .map(|b| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(b)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        let set_info = vk::DescriptorSetLayoutCreateInfo::default()
            .flags(vk::DescriptorSetLayoutCreateFlags::PUSH_DESCRIPTOR_KHR)
            .bindings(&bindings);
        // Objects made so far, destroyed if a later step fails.
        let mut set_layout = vk::DescriptorSetLayout::null();
        let mut layout = vk::PipelineLayout::null();
        let cleanup = |set_layout: vk::DescriptorSetLayout, layout: vk::PipelineLayout| {
            // SAFETY: the objects were created on `device` just above, are unused (no pipeline
            // was created from them) and null handles are ignored by the destroy calls.
            unsafe {
                device.destroy_pipeline_layout(layout, None);
                device.destroy_descriptor_set_layout(set_layout, None);
                device.destroy_shader_module(module, None);
            }
        };
        // SAFETY: `set_info` and `bindings` are valid and live across the call; push
        // descriptors were enabled with the device.
        match unsafe { device.create_descriptor_set_layout(&set_info, None) } {
            Ok(l) => set_layout = l,
            Err(e) => {
                cleanup(set_layout, layout);
                return Err(vk_error("creating a descriptor set layout", e));
            }
        }
        let set_layouts = [set_layout];
        let push_ranges = [vk::PushConstantRange::default()
            .stage_flags(vk::ShaderStageFlags::COMPUTE)
            .offset(0)
            .size(shader.push_constant_bytes)];
        let mut layout_info = vk::PipelineLayoutCreateInfo::default().set_layouts(&set_layouts);
        if shader.push_constant_bytes > 0 {
            layout_info = layout_info.push_constant_ranges(&push_ranges);
        }
        // SAFETY: `layout_info` and what it points to are valid and live across the call.
        match unsafe { device.create_pipeline_layout(&layout_info, None) } {
            Ok(l) => layout = l,
            Err(e) => {
                cleanup(set_layout, layout);
                return Err(vk_error("creating a pipeline layout", e));
            }
        }
        let entries: Vec<vk::SpecializationMapEntry> = (0u32..)
            .zip(shader.constants)
            .map(|(i, c)| {
                vk::SpecializationMapEntry::default()
                    .constant_id(c.id)
                    .offset(4 * i)
                    .size(4)
            })
            .collect();
        let data: Vec<u8> = shader
            .constants
            .iter()
            .flat_map(|c| c.value.to_ne_bytes())
            .collect();
        let spec_info = vk::SpecializationInfo::default()
            .map_entries(&entries)
            .data(&data);
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(c"main")
            .specialization_info(&spec_info);
        let statistics = ctx.pipeline_statistics();
        let flags = if statistics.is_some() {
            vk::PipelineCreateFlags::CAPTURE_STATISTICS_KHR
        } else {
            vk::PipelineCreateFlags::empty()
        };
        let info = [vk::ComputePipelineCreateInfo::default()
            .flags(flags)
            .stage(stage)
            .layout(layout)];
        // SAFETY: every structure is valid and lives across the call; the module, layout and
        // specialization data match the shader's declared interface.
        let created =
            unsafe { device.create_compute_pipelines(vk::PipelineCache::null(), &info, None) };
        // SAFETY: the module is not needed once the pipeline exists (or failed).
        unsafe { device.destroy_shader_module(module, None) };
        let pipeline = match created {
            Ok(p) => p[0],
            Err((_, e)) => {
                // SAFETY: created above, unused.
                unsafe {
                    device.destroy_pipeline_layout(layout, None);
                    device.destroy_descriptor_set_layout(set_layout, None);
                }
                return Err(vk_error(
                    &format!(
                        "creating the pipeline {} with constants {:?}",
                        shader.name, key.constants
                    ),
                    e,
                ));
            }
        };
        let statistics = statistics
            .map(|functions| pipeline_statistics(functions, pipeline, &key))
            .unwrap_or_default();
        Ok(Self {
            ctx: ctx.clone(),
            key,
            pipeline,
            layout,
            set_layout,
            storage_buffers: shader.storage_buffers,
            push_constant_bytes: shader.push_constant_bytes,
            statistics,
        })
    }

    /// What the driver said of it as `(name, value)` pairs (on NVIDIA: register count, local
    /// and shared memory sizes, binary size...), where [`crate::VulkanSettings::
    /// pipeline_statistics`] asked for them and the device has them; else empty.
    pub fn statistics(&self) -> &[(String, String)] {
        &self.statistics
    }

    /// The key it was made for.
    pub fn key(&self) -> &PipelineKey {
        &self.key
    }

    /// Records a dispatch of `groups` workgroups: binds the pipeline, pushes `buffers` as the
    /// storage buffers of bindings `0..` and `push` as the push constants.
    ///
    /// # Safety
    /// `cmd` must be a command buffer of this device in the recording state, and every buffer
    /// range must be a valid storage buffer range of this device that stays alive until the
    /// command buffer has executed. The caller orders the dispatch with other work by barriers.
    pub unsafe fn record(
        &self,
        cmd: vk::CommandBuffer,
        buffers: &[BufferRange],
        push: &[u32],
        groups: [u32; 3],
    ) -> Result<()> {
        if buffers.len() != self.storage_buffers as usize
            || push.len() * 4 != self.push_constant_bytes as usize
        {
            return Err(device_error(format!(
                "{}: {} buffers and {} push-constant bytes given, {} and {} expected",
                self.key.shader,
                buffers.len(),
                push.len() * 4,
                self.storage_buffers,
                self.push_constant_bytes
            )));
        }
        let device = self.ctx.device();
        let infos: Vec<[vk::DescriptorBufferInfo; 1]> = buffers
            .iter()
            .map(|r| {
                [vk::DescriptorBufferInfo::default()
                    .buffer(r.buffer)
                    .offset(r.offset)
                    .range(r.size)]
            })
            .collect();
        let writes: Vec<vk::WriteDescriptorSet> = infos
            .iter()
            .enumerate()
            .map(|(i, info)| {
                vk::WriteDescriptorSet::default()
                    .dst_binding(i as u32)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(info)
            })
            .collect();
        let push_bytes: Vec<u8> = push.iter().flat_map(|v| v.to_ne_bytes()).collect();
        // SAFETY: the caller guarantees that `cmd` is recording on this device and that the
        // buffers are valid; the pipeline, its layout and the descriptor writes match the
        // shader's interface (counts checked above).
        unsafe {
            device.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, self.pipeline);
            self.ctx.push_descriptor().cmd_push_descriptor_set(
                cmd,
                vk::PipelineBindPoint::COMPUTE,
                self.layout,
                0,
                &writes,
            );
            if !push_bytes.is_empty() {
                device.cmd_push_constants(
                    cmd,
                    self.layout,
                    vk::ShaderStageFlags::COMPUTE,
                    0,
                    &push_bytes,
                );
            }
            device.cmd_dispatch(cmd, groups[0], groups[1], groups[2]);
        }
        Ok(())
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // SAFETY: the objects belong to the context's device, kept alive by `ctx`; the backend
        // drops its cache only when no work of its own is pending, and callers of the device
        // API must not drop the backend while their command buffers run.
        unsafe {
            let device = self.ctx.device();
            device.destroy_pipeline(self.pipeline, None);
            device.destroy_pipeline_layout(self.layout, None);
            device.destroy_descriptor_set_layout(self.set_layout, None);
        }
    }
}

/// Pipelines by shader and specialization constants, created on first use.
#[derive(Debug)]
pub struct PipelineCache {
    ctx: Arc<VulkanContext>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
}

impl PipelineCache {
    /// An empty cache.
    pub fn new(ctx: &Arc<VulkanContext>) -> Self {
        Self {
            ctx: ctx.clone(),
            pipelines: Mutex::new(HashMap::new()),
        }
    }

    /// The pipeline of `shader` with specialization constants `spec`, created now if it is not
    /// cached. Fails with [`Error::Unsupported`] when the shader needs more invocations or
    /// shared memory than the device has ([`Specialization::resources`]).
    ///
    /// `spec` must be the shader's own struct:
    /// ```no_run
    /// # fn f(backend: &tessera_vulkan::VulkanBackend) -> tessera_core::Result<()> {
    /// use tessera_vulkan::ops::mla::{MlaCombineSpec, MLA_COMBINE};
    /// let spec = MlaCombineSpec { workgroup_size: 64 };
    /// let pipeline = backend.pipelines().get(&MLA_COMBINE, &spec)?;
    /// # Ok(()) }
    /// ```
    /// Another shader's constants do not compile:
    /// ```compile_fail,E0308
    /// # fn f(backend: &tessera_vulkan::VulkanBackend) -> tessera_core::Result<()> {
    /// use tessera_vulkan::ops::mla::{MlaCombineSpec, MLA_APPEND};
    /// let spec = MlaCombineSpec { workgroup_size: 64 };
    /// let pipeline = backend.pipelines().get(&MLA_APPEND, &spec)?;
    /// # Ok(()) }
    /// ```
    pub fn get<S: Specialization>(&self, shader: &Shader<S>, spec: &S) -> Result<Arc<Pipeline>> {
        let constants = spec.constants();
        let key = PipelineKey {
            shader: shader.name,
            constants: constants.iter().map(|c| (c.id, c.value)).collect(),
        };
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pipelines.get(&key) {
            return Ok(p.clone());
        }
        let source = PipelineSource {
            name: shader.name,
            spirv: shader.spirv,
            storage_buffers: shader.storage_buffers,
            push_constant_bytes: shader.push_constant_bytes,
            constants: &constants,
            resources: spec.resources(),
        };
        let p = Arc::new(Pipeline::new(&self.ctx, source, key.clone())?);
        pipelines.insert(key, p.clone());
        Ok(p)
    }

    /// How many pipelines have been created.
    pub fn len(&self) -> usize {
        self.pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether none has been created yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Splits `count` workgroups of a linear grid into an `(x, y, 1)` dispatch within the device's
/// per-dimension limits (65535 on many devices); shaders recover the index with
/// `linear_workgroup_id()` (common.glsl) and return when it is `>= count`.
pub fn linear_groups(count: u64, max: [u32; 3]) -> Result<[u32; 3]> {
    let count = count.max(1);
    let x = count.min(max[0].max(1) as u64);
    let y = count.div_ceil(x);
    if y > max[1].max(1) as u64 {
        return Err(Error::Unsupported {
            op: "vulkan dispatch",
            backend: BackendKind::Vulkan,
            reason: format!("{count} workgroups exceed the device's dispatch limits {max:?}"),
        });
    }
    Ok([x as u32, y as u32, 1])
}

/// Records a barrier making compute-shader writes visible to later compute-shader reads and
/// writes (between the passes of one op).
///
/// # Safety
/// `cmd` must be a command buffer of `device` in the recording state.
pub unsafe fn compute_barrier(device: &ash::Device, cmd: vk::CommandBuffer) {
    let barrier = [vk::MemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::SHADER_WRITE)
        .dst_access_mask(vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE)];
    // SAFETY: the caller guarantees `cmd` is recording on `device`.
    unsafe {
        device.cmd_pipeline_barrier(
            cmd,
            vk::PipelineStageFlags::COMPUTE_SHADER,
            vk::PipelineStageFlags::COMPUTE_SHADER,
            vk::DependencyFlags::empty(),
            &barrier,
            &[],
            &[],
        )
    };
}

/// What the driver says of `pipeline`, made for `key` (`VK_KHR_pipeline_executable_properties`:
/// on NVIDIA registers, shared and local memory...): each executable's statistics as
/// `(name, value)`, also logged at level info (the executable's name first where there are
/// several).
fn pipeline_statistics(
    functions: &ash::khr::pipeline_executable_properties::Device,
    pipeline: vk::Pipeline,
    key: &PipelineKey,
) -> Vec<(String, String)> {
    let name = key.shader;
    let info = vk::PipelineInfoKHR::default().pipeline(pipeline);
    // SAFETY: the pipeline was created with CAPTURE_STATISTICS by this device.
    let executables = match unsafe { functions.get_pipeline_executable_properties(&info) } {
        Ok(e) => e,
        Err(e) => {
            log::warn!("pipeline statistics of {name}: {e}");
            return Vec::new();
        }
    };
    let mut all = Vec::new();
    for (index, executable) in (0u32..).zip(&executables) {
        let info = vk::PipelineExecutableInfoKHR::default()
            .pipeline(pipeline)
            .executable_index(index);
        // SAFETY: as above; `index` is one of the pipeline's executables.
        let statistics = match unsafe { functions.get_pipeline_executable_statistics(&info) } {
            Ok(s) => s,
            Err(e) => {
                log::warn!("pipeline statistics of {name}: {e}");
                continue;
            }
        };
        let exe_name = crate::device::fixed_str(&executable.name);
        let prefix = if executables.len() > 1 {
            format!("{exe_name} ")
        } else {
            String::new()
        };
        let values: Vec<(String, String)> = statistics
            .iter()
            .map(|s| {
                let stat_name = crate::device::fixed_str(&s.name);
                // SAFETY: `format` says which member of the union the driver wrote.
                let value = unsafe {
                    match s.format {
                        vk::PipelineExecutableStatisticFormatKHR::BOOL32 => {
                            (s.value.b32 != 0).to_string()
                        }
                        vk::PipelineExecutableStatisticFormatKHR::INT64 => s.value.i64.to_string(),
                        vk::PipelineExecutableStatisticFormatKHR::UINT64 => s.value.u64.to_string(),
                        vk::PipelineExecutableStatisticFormatKHR::FLOAT64 => {
                            s.value.f64.to_string()
                        }
                        _ => "?".to_string(),
                    }
                };
                (format!("{prefix}{stat_name}"), value)
            })
            .collect();
        let text: Vec<String> = values.iter().map(|(n, v)| format!("{n}={v}")).collect();
        log::info!(
            "pipeline statistics of {name} {:?} ({exe_name}): {}",
            key.constants,
            text.join(", ")
        );
        all.extend(values);
    }
    all
}
