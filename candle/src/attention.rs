//! Block-sparse (radial) attention as a candle `CustomOp3` over q, k, v.

use crate::storage::{candle_error, check_shape, dims, halfs, invalid, Half, SideOutput};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};
use tessera_core::{Backend, BlockMask, DType, SparseAttention};
use tessera_reference::CpuBackend;

const OP: &str = "sparse_attention";

/// The attention forward as a candle op: q, k, v f16 or bf16 `[batch, tokens, heads,
/// head_dim]` (one dtype) → o (same); the log-sum-exp of each row (f32
/// `[batch, heads, tokens]`, on q's device) is kept for [`SparseAttentionOp::take_lse`] (candle
/// ops have one output). [`sparse_attention`] returns both. On CUDA the mask is uploaded on the
/// first forward and kept by the op: reuse one op for many calls to upload it once.
pub struct SparseAttentionOp {
    mask: BlockMask,
    softmax_scale: Option<f32>,
    lse: SideOutput,
    #[cfg(feature = "cuda")]
    device_mask: crate::cuda::MaskOnDevice,
}

impl SparseAttentionOp {
    /// The op for `mask` (one mask for every batch and head); `softmax_scale` defaults to
    /// `head_dim^-0.5`.
    pub fn new(mask: BlockMask, softmax_scale: Option<f32>) -> Self {
        Self {
            mask,
            softmax_scale,
            lse: SideOutput::new(),
            #[cfg(feature = "cuda")]
            device_mask: crate::cuda::MaskOnDevice::new(),
        }
    }

    /// The lse of the last forward, f32 `[batch, heads, tokens]`, on q's device.
    pub fn take_lse(&self) -> candle_core::Result<Tensor> {
        self.lse.take()
    }

    /// The descriptor of a forward over q of `shape` (`[batch, tokens, heads, head_dim]`).
    fn descriptor(&self, shape: &[usize], dtype: DType) -> SparseAttention {
        let mut op = SparseAttention::new(shape[0], shape[1], shape[2], shape[3], dtype);
        if let Some(s) = self.softmax_scale {
            op.softmax_scale = s;
        }
        op
    }
}

const NAMES: &str = "batch, tokens, heads, head_dim";

/// Checks q's rank and that k and v have its shape; returns q's shape.
fn shapes(l1: &Layout, l2: &Layout, l3: &Layout) -> candle_core::Result<Vec<usize>> {
    let shape = dims(OP, "q", l1, 4, NAMES)?.to_vec();
    check_shape(OP, "k", l2, &shape, NAMES)?;
    check_shape(OP, "v", l3, &shape, NAMES)?;
    Ok(shape)
}

impl CustomOp3 for SparseAttentionOp {
    fn name(&self) -> &'static str {
        "tessera_sparse_attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = shapes(l1, l2, l3)?;
        let (q, k, v) = (
            halfs(OP, "q", s1, l1)?,
            halfs(OP, "k", s2, l2)?,
            halfs(OP, "v", s3, l3)?,
        );
        let dtype = match q {
            Half::F16(_) => DType::F16,
            Half::BF16(_) => DType::BF16,
        };
        let op = self.descriptor(&shape, dtype);
        // The descriptor's validation names q, k or v of another dtype than q's.
        let out = CpuBackend::new()
            .sparse_attention(
                &op,
                &self.mask,
                q.tensor_ref(),
                k.tensor_ref(),
                v.tensor_ref(),
            )
            .map_err(candle_error)?;
        let o = match out.o {
            tessera_core::Tensor::F16(o) => CpuStorage::F16(o),
            tessera_core::Tensor::BF16(o) => CpuStorage::BF16(o),
            other => return Err(invalid(OP, "o", "f16 or bf16", other.dtype().name())),
        };
        self.lse.set(
            Storage::Cpu(CpuStorage::F32(out.lse)),
            (shape[0], shape[2], shape[1]),
        );
        Ok((o, Shape::from(shape)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::cuda::{half_view, CudaCall};
        use tessera_cuda::{DeviceHalf, DeviceHalfMut};
        let shape = shapes(l1, l2, l3)?;
        let (q, k, v) = (
            half_view(OP, "q", s1, l1)?,
            half_view(OP, "k", s2, l2)?,
            half_view(OP, "v", s3, l3)?,
        );
        let dtype = match q {
            DeviceHalf::F16(_) => DType::F16,
            DeviceHalf::BF16(_) => DType::BF16,
        };
        let op = self.descriptor(&shape, dtype);
        // Validated before anything is allocated (the `*_on` method checks k's and v's dtypes).
        op.validate(&self.mask).map_err(candle_error)?;
        let call = CudaCall::new(OP, s1)?;
        let mask = self.device_mask.get(&call, &self.mask)?;
        let mut lse = call.output::<f32>(op.lse_len())?;
        let lse_shape = (shape[0], shape[2], shape[1]);
        // o of q's element type; one launch path for both.
        let launch = |o_view: &mut DeviceHalfMut<'_>| {
            call.backend
                .sparse_attention_on(
                    &call.stream,
                    &op,
                    &mask,
                    &q,
                    &k,
                    &v,
                    o_view,
                    &mut lse.slice_mut(0..op.lse_len()),
                )
                .map_err(candle_error)
        };
        let o = match dtype {
            DType::F16 => half_output::<half::f16>(&call, op.qkv_len(), launch)?,
            _ => half_output::<half::bf16>(&call, op.qkv_len(), launch)?,
        };
        self.lse
            .set(Storage::Cuda(call.cuda_storage(lse)), lse_shape);
        Ok((o, Shape::from(shape)))
    }
}

/// A 16-bit float element of an attention output (f16 or bf16).
#[cfg(feature = "cuda")]
trait HalfElement:
    candle_core::cuda_backend::CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr
{
    /// A view of such elements as Tessera's 16-bit output.
    fn wrap(
        v: candle_core::cuda_backend::cudarc::driver::CudaViewMut<'_, Self>,
    ) -> tessera_cuda::DeviceHalfMut<'_>;
}

#[cfg(feature = "cuda")]
impl HalfElement for half::f16 {
    fn wrap(
        v: candle_core::cuda_backend::cudarc::driver::CudaViewMut<'_, Self>,
    ) -> tessera_cuda::DeviceHalfMut<'_> {
        tessera_cuda::DeviceHalfMut::F16(v)
    }
}

#[cfg(feature = "cuda")]
impl HalfElement for half::bf16 {
    fn wrap(
        v: candle_core::cuda_backend::cudarc::driver::CudaViewMut<'_, Self>,
    ) -> tessera_cuda::DeviceHalfMut<'_> {
        tessera_cuda::DeviceHalfMut::BF16(v)
    }
}

/// A new output of `len` elements of type `T` on the call's device, written by `launch`.
#[cfg(feature = "cuda")]
fn half_output<T: HalfElement>(
    call: &crate::cuda::CudaCall,
    len: usize,
    launch: impl FnOnce(&mut tessera_cuda::DeviceHalfMut<'_>) -> candle_core::Result<()>,
) -> candle_core::Result<candle_core::CudaStorage> {
    let mut o = call.output::<T>(len)?;
    launch(&mut T::wrap(o.slice_mut(0..len)))?;
    Ok(call.cuda_storage(o))
}

/// Block-sparse attention forward: `(o, lse)` for q, k, v f16 or bf16
/// `[batch, tokens, heads, head_dim]`, o of q's dtype and shape, lse f32
/// `[batch, heads, tokens]` (natural log).
pub fn sparse_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    softmax_scale: Option<f32>,
) -> candle_core::Result<(Tensor, Tensor)> {
    let op = SparseAttentionOp::new(mask.clone(), softmax_scale);
    let o = q.apply_op3_no_bwd(k, v, &op)?;
    Ok((o, op.take_lse()?))
}
