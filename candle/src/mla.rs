//! The paged MLA cache as a candle tensor, with the append (`InplaceOp3` on the pages) and the
//! absorbed decode (`CustomOp3` over q, the block table and the lengths, the pages in the op).

use crate::storage::{
    bf16s, candle_error, check_shape, dims, indices, invalid, storage_dtype, SideOutput,
};
use candle_core::{
    CpuStorage, CustomOp3, DType, Device, InplaceOp3, Layout, Shape, Storage, Tensor,
};
use tessera_core::{Backend, MlaAppend, MlaCacheLayout, MlaDecode};
use tessera_reference::CpuBackend;

/// A paged MLA cache owning its pages: a u8 tensor `[num_pages, page_size, token_bytes]` of
/// `layout` (bf16 or DeepSeek-V3.2's FP8 records), on the CPU or a CUDA device. Indices (slots,
/// block table, lengths) are i32 tensors, or on the CPU also i64 (whose values must fit i32):
/// the CUDA kernels read i32 (candle has no i64 to i32 cast on CUDA: make them from i32 values).
pub struct MlaCache {
    layout: MlaCacheLayout,
    pages: Tensor,
}

/// The cache of `bytes` (the pages' storage) as Tessera's host cache.
fn host_cache(
    layout: MlaCacheLayout,
    num_pages: usize,
    bytes: &[u8],
) -> candle_core::Result<tessera_core::MlaCache> {
    tessera_core::MlaCache::from_bytes(layout, num_pages, bytes.to_vec()).map_err(candle_error)
}

const APPEND: &str = "mla_append";
const DECODE: &str = "mla_decode";

impl MlaCache {
    /// A zeroed cache of `num_pages` pages on `device` (the CPU or a CUDA device).
    pub fn new(
        layout: MlaCacheLayout,
        num_pages: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        layout.validate().map_err(candle_error)?;
        if num_pages == 0 {
            return Err(invalid("mla_cache", "num_pages", "at least 1", "0"));
        }
        let pages = Tensor::zeros(
            (num_pages, layout.page_size, layout.token_bytes()),
            DType::U8,
            device,
        )?;
        Ok(Self { layout, pages })
    }

    /// The layout.
    pub fn layout(&self) -> &MlaCacheLayout {
        &self.layout
    }

    /// The pages, u8 `[num_pages, page_size, token_bytes]`.
    pub fn pages(&self) -> &Tensor {
        &self.pages
    }

    /// Writes token `t` of latent bf16 `[tokens, latent_dim]` and rope bf16
    /// `[tokens, rope_dim]` to slot `slots[t]` (i32 `[tokens]`, or i64 on the CPU; distinct;
    /// negative: skipped). On the CPU a slot beyond the cache is an error and nothing is
    /// written; on CUDA the slots are on the device and such a token is skipped.
    pub fn append(
        &self,
        latent: &Tensor,
        rope: &Tensor,
        slots: &Tensor,
    ) -> candle_core::Result<()> {
        let op = AppendOp {
            layout: self.layout,
            slots: slots.clone(),
        };
        self.pages.inplace_op3(latent, rope, &op)
    }

    /// Absorbed MLA decode: q bf16 `[batch, s_q, heads, latent_dim + rope_dim]`, block_table
    /// i32 `[batch, max_pages]`, seq_lens i32 `[batch]` (or i64 on the CPU) → `(o, lse)`, on
    /// q's device: bf16 `[batch, s_q, heads, latent_dim]` and f32 `[batch, heads, s_q]`
    /// (natural log; `-inf` and o = 0 where a query sees no key). On CUDA the table and
    /// lengths are on the device and checked by the kernel: a bad entry gives NaN for its
    /// request (the CPU reports an error).
    pub fn decode(
        &self,
        q: &Tensor,
        block_table: &Tensor,
        seq_lens: &Tensor,
        softmax_scale: f32,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let op = DecodeOp {
            layout: self.layout,
            pages: self.pages.clone(),
            softmax_scale,
            lse: SideOutput::new(),
        };
        let o = q.apply_op3_no_bwd(block_table, seq_lens, &op)?;
        Ok((o, op.lse.take()?))
    }
}

/// The append, in place on the pages.
struct AppendOp {
    layout: MlaCacheLayout,
    slots: Tensor,
}

impl AppendOp {
    /// Checks the shapes of the pages, latent, rope and slots (`sl`); the descriptor.
    fn descriptor(
        &self,
        pl: &Layout,
        l2: &Layout,
        l3: &Layout,
        sl: &Layout,
    ) -> candle_core::Result<MlaAppend> {
        let l = self.layout;
        dims(APPEND, "cache", pl, 3, "num_pages, page_size, token_bytes")?;
        let tokens = dims(APPEND, "slots", sl, 1, "tokens")?[0];
        check_shape(
            APPEND,
            "latent",
            l2,
            &[tokens, l.latent_dim],
            "tokens, latent_dim",
        )?;
        check_shape(
            APPEND,
            "rope",
            l3,
            &[tokens, l.rope_dim],
            "tokens, rope_dim",
        )?;
        Ok(MlaAppend { tokens })
    }
}

impl InplaceOp3 for AppendOp {
    fn name(&self) -> &'static str {
        "tessera_mla_append"
    }

    fn cpu_fwd(
        &self,
        pages: &mut CpuStorage,
        pl: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (slots_storage, sl) = self.slots.storage_and_layout();
        let op = self.descriptor(pl, l2, l3, sl)?;
        let Storage::Cpu(slots_storage) = &*slots_storage else {
            return Err(invalid(
                APPEND,
                "slots",
                "a CPU tensor (the cache's device)",
                "another device",
            ));
        };
        let slots = indices(APPEND, "slots", slots_storage, sl)?;
        let latent = bf16s(APPEND, "latent", s2, l2)?;
        let rope = bf16s(APPEND, "rope", s3, l3)?;
        let num_pages = pl.shape().dims()[0];
        let CpuStorage::U8(bytes) = pages else {
            return Err(invalid(APPEND, "cache", "dtype u8", storage_dtype(pages)));
        };
        let (start, end) = crate::storage::contiguous_range(APPEND, "cache", pl)?;
        let mut cache = host_cache(self.layout, num_pages, &bytes[start..end])?;
        CpuBackend::new()
            .mla_append(&op, &mut cache, latent, rope, &slots)
            .map_err(candle_error)?;
        bytes[start..end].copy_from_slice(cache.as_bytes());
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        pages: &mut candle_core::CudaStorage,
        pl: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        use crate::cuda::{bf16_view, i32_view, u8_view_mut, CudaCall};
        use tessera_cuda::MlaAppendBuffers;
        let (slots_storage, sl) = self.slots.storage_and_layout();
        let op = self.descriptor(pl, l2, l3, sl)?;
        let call = CudaCall::new(APPEND, s2)?;
        let slots_storage = call.same_gpu("slots", &slots_storage)?;
        let mut bufs = MlaAppendBuffers {
            latent: bf16_view(APPEND, "latent", s2, l2)?,
            rope: bf16_view(APPEND, "rope", s3, l3)?,
            slots: i32_view(APPEND, "slots", slots_storage, sl)?,
            cache: u8_view_mut(APPEND, "cache", pages, pl)?,
        };
        call.backend
            .mla_append_on(&call.stream, &op, &self.layout, &mut bufs)
            .map_err(candle_error)
    }
}

/// The decode over q, the block table and the lengths (the pages are the op's).
struct DecodeOp {
    layout: MlaCacheLayout,
    pages: Tensor,
    softmax_scale: f32,
    lse: SideOutput,
}

impl DecodeOp {
    /// Checks the shapes of q, the block table, the lengths and the pages (`pl`); the
    /// descriptor.
    fn descriptor(
        &self,
        l1: &Layout,
        l2: &Layout,
        l3: &Layout,
        pl: &Layout,
    ) -> candle_core::Result<MlaDecode> {
        let l = self.layout;
        let names = "batch, s_q, heads, latent_dim + rope_dim";
        let qd = dims(DECODE, "q", l1, 4, names)?.to_vec();
        let (batch, s_q, heads) = (qd[0], qd[1], qd[2]);
        check_shape(DECODE, "q", l1, &[batch, s_q, heads, l.qk_dim()], names)?;
        let td = dims(DECODE, "block_table", l2, 2, "batch, max_pages")?.to_vec();
        check_shape(
            DECODE,
            "block_table",
            l2,
            &[batch, td[1]],
            "batch, max_pages",
        )?;
        check_shape(DECODE, "seq_lens", l3, &[batch], "batch")?;
        dims(DECODE, "cache", pl, 3, "num_pages, page_size, token_bytes")?;
        Ok(MlaDecode {
            batch,
            s_q,
            heads,
            max_pages: td[1],
            softmax_scale: self.softmax_scale,
            layout: l,
        })
    }
}

impl CustomOp3 for DecodeOp {
    fn name(&self) -> &'static str {
        "tessera_mla_decode"
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
        let (storage, pl) = self.pages.storage_and_layout();
        let op = self.descriptor(l1, l2, l3, pl)?;
        let q = bf16s(DECODE, "q", s1, l1)?;
        let table = indices(DECODE, "block_table", s2, l2)?;
        let lens = indices(DECODE, "seq_lens", s3, l3)?;
        let Storage::Cpu(CpuStorage::U8(bytes)) = &*storage else {
            return Err(invalid(
                DECODE,
                "cache",
                "u8 pages on the CPU (q's device)",
                "another tensor",
            ));
        };
        let (start, end) = crate::storage::contiguous_range(DECODE, "cache", pl)?;
        let cache = host_cache(self.layout, pl.shape().dims()[0], &bytes[start..end])?;
        let out = CpuBackend::new()
            .mla_decode(&op, &cache, q, &table, &lens)
            .map_err(candle_error)?;
        self.lse.set(
            Storage::Cpu(CpuStorage::F32(out.lse)),
            (op.batch, op.heads, op.s_q),
        );
        Ok((
            CpuStorage::BF16(out.o),
            Shape::from((op.batch, op.s_q, op.heads, self.layout.latent_dim)),
        ))
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
        use crate::cuda::{bf16_view, i32_view, u8_view, CudaCall};
        use tessera_cuda::MlaDecodeBuffers;
        let (storage, pl) = self.pages.storage_and_layout();
        let op = self.descriptor(l1, l2, l3, pl)?;
        let call = CudaCall::new(DECODE, s1)?;
        let pages = call.same_gpu("cache", &storage)?;
        let q = bf16_view(DECODE, "q", s1, l1)?;
        let block_table = i32_view(DECODE, "block_table", s2, l2)?;
        let seq_lens = i32_view(DECODE, "seq_lens", s3, l3)?;
        let cache = u8_view(DECODE, "cache", pages, pl)?;
        // The lengths are on the device: the plan assumes the longest the table allows (any
        // length stays correct; it only guides the number of KV splits).
        let max_seq_len = op.max_pages * self.layout.page_size;
        let plan = call
            .backend
            .mla_decode_plan(&op, max_seq_len)
            .map_err(candle_error)?;
        let mut o = call.output::<half::bf16>(op.o_len())?;
        let mut lse = call.output::<f32>(op.lse_len())?;
        let mut workspace = call.scratch::<f32>(plan.workspace_len())?;
        let mut bufs = MlaDecodeBuffers {
            cache,
            q,
            block_table,
            seq_lens,
            o: o.slice_mut(0..op.o_len()),
            lse: lse.slice_mut(0..op.lse_len()),
            workspace: workspace.slice_mut(0..plan.workspace_len()),
        };
        call.backend
            .mla_decode_on(&call.stream, &op, &plan, &mut bufs)
            .map_err(candle_error)?;
        self.lse.set(
            Storage::Cuda(call.cuda_storage(lse)),
            (op.batch, op.heads, op.s_q),
        );
        Ok((
            call.cuda_storage(o),
            Shape::from((op.batch, op.s_q, op.heads, self.layout.latent_dim)),
        ))
    }
}
