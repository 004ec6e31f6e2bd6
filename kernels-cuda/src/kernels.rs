//! Every kernel variant the library can ask for, gathered from the op modules.

use crate::compile::KernelVariant;

/// Every variant the library can compile: CI compiles them all (for sm_90a and sm_80) so that a
/// kernel that does not compile fails there, GPU or not.
pub fn all_variants() -> Vec<KernelVariant> {
    let mut v = Vec::new();
    v.extend(crate::ops::fp8::variants());
    v.extend(crate::ops::fp8_gemm::variants());
    v.extend(crate::ops::attention::variants());
    v.extend(crate::ops::mla::variants());
    v
}
