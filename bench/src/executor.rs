//! What a backend provides to `tessera bench` ([`crate::run`]): a way of timing each kind of
//! case of [`crate::cases`]. Implemented by [`crate::bench_cuda`] and [`crate::bench_vk`].

use crate::cases::{AttentionCase, AttentionWork, GroupedGemmCase, MlaShape, QuantizeCase};
use crate::schema::{Ceilings, Record};

/// One backend's way of timing the cases. Each method returns the record of one measurement
/// (with `error` set when it failed or was skipped); rates are filled in by [`crate::run::run`].
pub trait Executor {
    /// The device's name.
    fn device(&self) -> String;
    /// The ceilings measured on this device.
    fn ceilings(&self) -> &Ceilings;
    /// How the numbers are taken, for the file's header.
    fn notes(&self) -> Vec<String>;
    /// One FP8 GEMM.
    fn gemm(&mut self, m: usize, n: usize, k: usize) -> Record;
    /// One grouped FP8 GEMM (mixture of experts; op [`crate::cases::GROUPED_GEMM_OP`], params
    /// [`GroupedGemmCase::params`]).
    fn grouped_gemm(&mut self, case: &GroupedGemmCase) -> Record;
    /// One FP8 quantizer (bf16 in).
    fn quantize(&mut self, case: &QuantizeCase) -> Record;
    /// Prepares the MLA decodes of one cache format (`shapes` all have that format).
    fn mla_begin(&mut self, shapes: &[MlaShape]);
    /// One MLA decode (of the format last prepared).
    fn mla(&mut self, shape: &MlaShape) -> Record;
    /// One attention case, radial or dense, with its mask and op built ([`AttentionCase::work`]).
    fn attention(&mut self, case: &AttentionCase, work: &AttentionWork, radial: bool) -> Record;
    /// The backward of one attention case (op [`crate::cases::ATTENTION_BACKWARD_OP`], `work`
    /// from [`AttentionCase::backward_work`]): one record per way the backend runs it
    /// ([`crate::cases::ATTENTION_BACKWARD_IMPLS`]); none when the backend has no backward.
    fn attention_backward(&mut self, case: &AttentionCase, work: &AttentionWork) -> Vec<Record> {
        let _ = (case, work);
        Vec::new()
    }
}
