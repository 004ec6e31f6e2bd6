//! The paged MLA cache as a candle tensor, with the append (`InplaceOp3` on the pages) and the
//! absorbed decode (`CustomOp3` over q, the block table and the lengths, the pages in the op).

use crate::storage::{bf16s, candle_error, check_shape, dims, i64s, invalid, storage_dtype};
use candle_core::{
    CpuStorage, CustomOp3, DType, Device, InplaceOp3, Layout, Shape, Storage, Tensor,
};
use std::sync::Mutex;
use tessera_core::{Backend, MlaAppend, MlaCacheLayout, MlaDecode};
use tessera_reference::CpuBackend;

/// A paged MLA cache owning its pages: a u8 tensor `[num_pages, page_size, token_bytes]` of
/// `layout` (bf16 or DeepSeek-V3.2's FP8 records). Indices (slots, block table, lengths) are
/// i64 tensors, whose values must fit i32.
pub struct MlaCache {
    layout: MlaCacheLayout,
    pages: Tensor,
}

/// `values` as i32, naming `arg` if one does not fit.
fn to_i32(op: &'static str, arg: &str, values: &[i64]) -> candle_core::Result<Vec<i32>> {
    values
        .iter()
        .map(|&v| {
            i32::try_from(v).map_err(|_| invalid(op, arg, "values that fit i32", v.to_string()))
        })
        .collect()
}

/// The cache of `bytes` (the pages' storage) as Tessera's host cache.
fn host_cache(
    layout: MlaCacheLayout,
    num_pages: usize,
    bytes: &[u8],
) -> candle_core::Result<tessera_core::MlaCache> {
    tessera_core::MlaCache::from_bytes(layout, num_pages, bytes.to_vec()).map_err(candle_error)
}

impl MlaCache {
    /// A zeroed cache of `num_pages` pages on `device` (the CPU).
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
    /// `[tokens, rope_dim]` to slot `slots[t]` (i64 `[tokens]`, distinct; negative: skipped).
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
    /// i64 `[batch, max_pages]`, seq_lens i64 `[batch]` → `(o, lse)`: bf16
    /// `[batch, s_q, heads, latent_dim]` and f32 `[batch, heads, s_q]` (natural log; `-inf` and
    /// o = 0 where a query sees no key).
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
            lse: Mutex::new(None),
        };
        let o = q.apply_op3_no_bwd(block_table, seq_lens, &op)?;
        let taken = op.lse.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (lse, shape) =
            taken.ok_or_else(|| candle_core::Error::Msg("no forward has run".into()))?;
        Ok((o, Tensor::from_vec(lse, &shape, q.device())?))
    }
}

/// The append, in place on the pages.
struct AppendOp {
    layout: MlaCacheLayout,
    slots: Tensor,
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
        const OP: &str = "mla_append";
        let l = self.layout;
        let (slots_storage, sl) = self.slots.storage_and_layout();
        let Storage::Cpu(slots_storage) = &*slots_storage else {
            return Err(invalid(OP, "slots", "a CPU tensor", "another device"));
        };
        let tokens = dims(OP, "slots", sl, 1, "tokens")?[0];
        check_shape(
            OP,
            "latent",
            l2,
            &[tokens, l.latent_dim],
            "tokens, latent_dim",
        )?;
        check_shape(OP, "rope", l3, &[tokens, l.rope_dim], "tokens, rope_dim")?;
        let slots = to_i32(OP, "slots", i64s(OP, "slots", slots_storage, sl)?)?;
        let latent = bf16s(OP, "latent", s2, l2)?;
        let rope = bf16s(OP, "rope", s3, l3)?;
        let num_pages = pl.shape().dims()[0];
        let CpuStorage::U8(bytes) = pages else {
            return Err(invalid(OP, "cache", "dtype u8", storage_dtype(pages)));
        };
        let Some((start, end)) = pl.contiguous_offsets() else {
            return Err(invalid(OP, "cache", "contiguous pages", "strided"));
        };
        let mut cache = host_cache(l, num_pages, &bytes[start..end])?;
        CpuBackend::new()
            .mla_append(&MlaAppend { tokens }, &mut cache, latent, rope, &slots)
            .map_err(candle_error)?;
        bytes[start..end].copy_from_slice(cache.as_bytes());
        Ok(())
    }
}

/// The decode over q, the block table and the lengths (the pages are the op's).
struct DecodeOp {
    layout: MlaCacheLayout,
    pages: Tensor,
    softmax_scale: f32,
    lse: Mutex<Option<(Vec<f32>, [usize; 3])>>,
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
        const OP: &str = "mla_decode";
        let l = self.layout;
        let names = "batch, s_q, heads, latent_dim + rope_dim";
        let qd = dims(OP, "q", l1, 4, names)?.to_vec();
        let (batch, s_q, heads) = (qd[0], qd[1], qd[2]);
        check_shape(OP, "q", l1, &[batch, s_q, heads, l.qk_dim()], names)?;
        let td = dims(OP, "block_table", l2, 2, "batch, max_pages")?.to_vec();
        check_shape(OP, "block_table", l2, &[batch, td[1]], "batch, max_pages")?;
        check_shape(OP, "seq_lens", l3, &[batch], "batch")?;
        let q = bf16s(OP, "q", s1, l1)?;
        let table = to_i32(OP, "block_table", i64s(OP, "block_table", s2, l2)?)?;
        let lens = to_i32(OP, "seq_lens", i64s(OP, "seq_lens", s3, l3)?)?;
        let (storage, pl) = self.pages.storage_and_layout();
        let Storage::Cpu(CpuStorage::U8(bytes)) = &*storage else {
            return Err(invalid(
                OP,
                "cache",
                "u8 pages on the CPU",
                "another tensor",
            ));
        };
        let Some((start, end)) = pl.contiguous_offsets() else {
            return Err(invalid(OP, "cache", "contiguous pages", "strided"));
        };
        let cache = host_cache(l, pl.shape().dims()[0], &bytes[start..end])?;
        let op = MlaDecode {
            batch,
            s_q,
            heads,
            max_pages: td[1],
            softmax_scale: self.softmax_scale,
            layout: l,
        };
        let out = CpuBackend::new()
            .mla_decode(&op, &cache, q, &table, &lens)
            .map_err(candle_error)?;
        *self.lse.lock().unwrap_or_else(|p| p.into_inner()) = Some((out.lse, [batch, heads, s_q]));
        Ok((
            CpuStorage::BF16(out.o),
            Shape::from((batch, s_q, heads, l.latent_dim)),
        ))
    }
}
