//! MLA in f64: cache append, absorbed decode over the paged cache, and the non-absorbed
//! (per-head expanded) MLA of the model definition that proves absorption correct.

use half::bf16;
use tessera_core::{MlaCache, MlaDecode};

/// Writes tokens to their slots (negative slots skipped); FP8 caches quantize each 128 latent
/// values with `mla_fp8_scale`. Arguments must be valid (`MlaAppend::validate_args`).
pub fn mla_append(cache: &mut MlaCache, latent: &[bf16], rope: &[bf16], slots: &[i32]) {
    let _ = (cache, latent, rope, slots);
    todo!()
}

/// Output of the reference decode.
#[derive(Clone, Debug, PartialEq)]
pub struct MlaDecodeResult {
    /// `[batch, s_q, heads, latent_dim]`.
    pub o: Vec<f64>,
    /// `[batch, heads, s_q]`, natural log; -inf where the query sees no key.
    pub lse: Vec<f64>,
}

/// Absorbed decode over the paged cache (see `MlaDecode`); q `[batch, s_q, heads, qk_dim]`.
/// Arguments must be valid (`MlaDecode::validate_args`).
pub fn mla_decode(op: &MlaDecode, cache: &MlaCache, q: &[f64], block_table: &[i32], seq_lens: &[i32]) -> MlaDecodeResult {
    let _ = (op, cache, q, block_table, seq_lens);
    todo!()
}
