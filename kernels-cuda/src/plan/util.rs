//! Utility kernels that are not ops: the GPU busy-wait of `kernels/gpu_sleep.cu`.

use super::{check_resources, ArchSpec, KernelSpec};
use crate::compile::KernelSource;
use tessera_core::Result;

/// The busy-wait kernel: one warp, lane 0 spinning on the global timer (sm_70+: `__nanosleep`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GpuSleepVariant;

impl KernelSpec for GpuSleepVariant {
    fn op(&self) -> &'static str {
        "gpu_sleep"
    }
    fn source(&self) -> KernelSource {
        crate::kernels::GPU_SLEEP
    }
    fn defines(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    fn entry(&self) -> &'static str {
        "gpu_sleep"
    }
    fn threads(&self) -> u32 {
        32
    }
    fn smem_bytes(&self) -> u32 {
        0
    }
    fn valid_on(&self, arch: &ArchSpec) -> Result<()> {
        check_resources(self, arch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warp_no_constants() {
        let k = GpuSleepVariant.kernel();
        assert_eq!(k.source.file, "gpu_sleep.cu");
        assert_eq!(k.define_value("TESSERA_THREADS"), Some("32"));
        assert_eq!(k.define_value("TESSERA_SMEM_BYTES"), Some("0"));
        let h = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        GpuSleepVariant.valid_on(&h).unwrap();
    }
}
