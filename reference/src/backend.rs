//! The CPU backend: the reference served through the [`Backend`] trait.
//!
//! It validates like every backend, computes in f64 with the reference, and rounds the outputs
//! to their storage types once at the end. It is slow by design: it exists to be right.

use crate::attention::{
    block_sparse_attention, block_sparse_attention_backward, AttentionShape, BackwardInputs,
};
use half::bf16;
use tessera_core::ops::attention::{AttentionGradients, AttentionOutput, SparseAttention};
use tessera_core::{
    Backend, BackendKind, BlockMask, DeviceFeatures, DeviceInfo, Fp8Gemm, Fp8Quantize,
    Fp8Quantized, MlaAppend, MlaCache, MlaDecode, MlaDecodeOutput, MlaDecodeVarlen, Result, Tensor,
    TensorRef, E4M3,
};

/// The reference backend. Always available.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    device: DeviceInfo,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// The CPU backend.
    pub fn new() -> Self {
        Self {
            device: DeviceInfo {
                backend: BackendKind::Cpu,
                name: "pure-Rust reference (f64 accumulation)".to_string(),
                features: DeviceFeatures::default(),
            },
        }
    }
}

fn to_f64(t: TensorRef<'_>) -> Vec<f64> {
    (0..t.len()).map(|i| t.get_f32(i) as f64).collect()
}

fn bf16_to_f64(v: &[bf16]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

impl Backend for CpuBackend {
    fn device(&self) -> &DeviceInfo {
        &self.device
    }

    fn sparse_attention(
        &self,
        op: &SparseAttention,
        mask: &BlockMask,
        q: TensorRef<'_>,
        k: TensorRef<'_>,
        v: TensorRef<'_>,
    ) -> Result<AttentionOutput> {
        op.validate_args(mask, q, k, v)?;
        let shape = AttentionShape {
            batch: op.batch,
            q_tokens: op.tokens,
            kv_tokens: op.tokens,
            heads: op.heads,
            head_dim: op.head_dim,
        };
        let r = block_sparse_attention(
            shape,
            &to_f64(q),
            &to_f64(k),
            &to_f64(v),
            op.softmax_scale as f64,
            mask,
        );
        Ok(AttentionOutput {
            o: Tensor::from_f64(op.dtype, &r.o),
            lse: r.lse.iter().map(|&x| x as f32).collect(),
        })
    }

    /// Computes in f64 from the given `o` and `lse` (as a GPU kernel reads them: rounded to their
    /// storage types), rounding the gradients to `op.dtype` once at the end.
    fn sparse_attention_backward(
        &self,
        op: &SparseAttention,
        mask: &BlockMask,
        q: TensorRef<'_>,
        k: TensorRef<'_>,
        v: TensorRef<'_>,
        o: TensorRef<'_>,
        lse: &[f32],
        d_o: TensorRef<'_>,
    ) -> Result<AttentionGradients> {
        op.validate_backward_args(mask, q, k, v, o, lse, d_o)?;
        let shape = AttentionShape {
            batch: op.batch,
            q_tokens: op.tokens,
            kv_tokens: op.tokens,
            heads: op.heads,
            head_dim: op.head_dim,
        };
        let (q, k, v, o, d_o) = (to_f64(q), to_f64(k), to_f64(v), to_f64(o), to_f64(d_o));
        let lse: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
        let g = block_sparse_attention_backward(
            shape,
            BackwardInputs {
                q: &q,
                k: &k,
                v: &v,
                o: &o,
                lse: &lse,
                d_o: &d_o,
            },
            op.softmax_scale as f64,
            mask,
        );
        Ok(AttentionGradients {
            dq: Tensor::from_f64(op.dtype, &g.dq),
            dk: Tensor::from_f64(op.dtype, &g.dk),
            dv: Tensor::from_f64(op.dtype, &g.dv),
        })
    }

    fn mla_append(
        &self,
        op: &MlaAppend,
        cache: &mut MlaCache,
        latent: &[bf16],
        rope: &[bf16],
        slots: &[i32],
    ) -> Result<()> {
        op.validate_args(cache, latent, rope, slots)?;
        crate::mla::mla_append(cache, latent, rope, slots);
        Ok(())
    }

    fn mla_decode(
        &self,
        op: &MlaDecode,
        cache: &MlaCache,
        q: &[bf16],
        block_table: &[i32],
        seq_lens: &[i32],
    ) -> Result<MlaDecodeOutput> {
        op.validate_args(cache, q, block_table, seq_lens)?;
        let r = crate::mla::mla_decode(op, cache, &bf16_to_f64(q), block_table, seq_lens);
        Ok(MlaDecodeOutput {
            o: r.o.iter().map(|&x| bf16::from_f64(x)).collect(),
            lse: r.lse.iter().map(|&x| x as f32).collect(),
        })
    }

    fn mla_decode_varlen(
        &self,
        op: &MlaDecodeVarlen,
        cache: &MlaCache,
        q: &[bf16],
        cu_seqlens_q: &[i32],
        block_table: &[i32],
        seq_lens: &[i32],
    ) -> Result<MlaDecodeOutput> {
        op.validate_args(cache, q, cu_seqlens_q, block_table, seq_lens)?;
        let r = crate::mla::mla_decode_varlen(
            op,
            cache,
            &bf16_to_f64(q),
            cu_seqlens_q,
            block_table,
            seq_lens,
        );
        Ok(MlaDecodeOutput {
            o: r.o.iter().map(|&x| bf16::from_f64(x)).collect(),
            lse: r.lse.iter().map(|&x| x as f32).collect(),
        })
    }

    fn fp8_quantize(&self, op: &Fp8Quantize, x: TensorRef<'_>) -> Result<Fp8Quantized> {
        op.validate_args(x)?;
        Ok(crate::fp8::quantize(op, &x.to_f32_vec()))
    }

    fn fp8_gemm(
        &self,
        op: &Fp8Gemm,
        a: &[E4M3],
        a_scales: &[f32],
        b: &[E4M3],
        b_scales: &[f32],
    ) -> Result<Vec<bf16>> {
        op.require_single()?;
        op.validate_args(a, a_scales, b, b_scales)?;
        let d = crate::fp8::fp8_gemm(op, a, a_scales, b, b_scales);
        // f64 -> f32 -> bf16 can double-round; f64 -> bf16 directly rounds once.
        Ok(d.iter().map(|&x| bf16::from_f64(x)).collect())
    }

    fn fp8_gemm_grouped(
        &self,
        op: &Fp8Gemm,
        a: &[E4M3],
        a_scales: &[f32],
        b: &[E4M3],
        b_scales: &[f32],
        groups: &[i32],
    ) -> Result<Vec<bf16>> {
        op.validate_args(a, a_scales, b, b_scales)?;
        op.validate_group_layout(groups)?;
        let d = crate::fp8::fp8_gemm_grouped(op, a, a_scales, b, b_scales, groups);
        Ok(d.iter().map(|&x| bf16::from_f64(x)).collect())
    }
}
