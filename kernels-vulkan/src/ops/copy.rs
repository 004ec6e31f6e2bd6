//! A buffer copy by a compute shader (`copy_words`): what shaders can stream through memory,
//! the Vulkan benchmark's copy ceiling (a transfer-queue `vkCmdCopyBuffer` may run on a copy
//! engine with other limits).

use super::bind_range;
use crate::memory::BufferRange;
use crate::pipeline::{Shader, ShaderResources, SpecConstant, Specialization};
use crate::VulkanBackend;
use ash::vk;
use std::marker::PhantomData;
use tessera_core::{Error, Result};

const OP: &str = "copy_words";

/// Invocations per workgroup.
const WORKGROUP: u32 = 256;

/// The copy shader. Bindings: src, dst; push constants words, stride. Specialization:
/// [`CopyWordsSpec`].
pub const COPY_WORDS: Shader<CopyWordsSpec> = Shader {
    name: "copy_words",
    spirv: spirv!("copy_words"),
    storage_buffers: 2,
    push_constant_bytes: 8,
    specialization: PhantomData,
};

/// The specialization constants of `copy_words.comp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CopyWordsSpec {
    /// Invocations per workgroup.
    pub workgroup_size: u32,
}

impl Default for CopyWordsSpec {
    fn default() -> Self {
        Self {
            workgroup_size: WORKGROUP,
        }
    }
}

impl Specialization for CopyWordsSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        vec![SpecConstant::local_size_x(0, self.workgroup_size)]
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: self.workgroup_size,
            shared_memory_bytes: 0,
        }
    }
}

impl VulkanBackend {
    /// Records a copy of `bytes` bytes (a multiple of 16) from `src` to `dst` by a compute
    /// shader: enough workgroups to fill the device (at most 65,535, each invocation striding
    /// over the range).
    ///
    /// Synchronization: the caller records a barrier making the writes of `src` visible to
    /// compute-shader reads before this, and one from compute-shader writes to whatever reads
    /// `dst` after it; the ranges must not overlap.
    ///
    /// # Safety
    /// `cmd` must be a command buffer of this backend's device ([`VulkanBackend::context`]) in
    /// the recording state, and the ranges must lie in live buffers of that device created with
    /// `STORAGE_BUFFER` usage.
    pub unsafe fn record_copy_words(
        &self,
        cmd: vk::CommandBuffer,
        src: BufferRange,
        dst: BufferRange,
        bytes: u64,
    ) -> Result<()> {
        if bytes == 0 || bytes % 16 != 0 {
            return Err(Error::invalid(
                OP,
                "bytes",
                "a positive multiple of 16",
                bytes.to_string(),
            ));
        }
        let f = self.features();
        let src = bind_range(OP, "src", &src, bytes, f)?;
        let dst = bind_range(OP, "dst", &dst, bytes, f)?;
        let words = u32::try_from(bytes / 16)
            .map_err(|_| Error::invalid(OP, "bytes", "at most 2^36 - 16", bytes.to_string()))?;
        let groups = (words.div_ceil(WORKGROUP)).clamp(1, f.max_workgroup_count[0].min(65_535));
        let stride = groups * WORKGROUP;
        let spec = CopyWordsSpec {
            workgroup_size: WORKGROUP,
        };
        let pipeline = self.pipelines().get(&COPY_WORDS, &spec)?;
        // SAFETY: the caller guarantees that `cmd` records on this device and that the ranges
        // are valid storage buffers; both were checked to hold `bytes`.
        unsafe { pipeline.record(cmd, &[src, dst], &[words, stride], [groups, 1, 1]) }
    }
}
