//! The raw device-pointer API: every op on device addresses (`CUdeviceptr`, as `u64`) and a
//! caller's `CUstream`, for frameworks that own their memory and streams (PyTorch, candle, C
//! callers) and cannot hand over `cudarc` buffers.
//!
//! Each argument is a [`DeviceSpan`]: an address and a length in elements of the argument's type
//! (the types and layouts are those of the `*_on` methods, see the README's Layouts table). The
//! lengths are checked against the op descriptor exactly as the `*_on` methods check theirs, and
//! every non-empty span is checked to be:
//! - non-null and aligned to its element size (an f32 span to 4 bytes, bf16 to 2); the ops add
//!   their own stricter rules (16 bytes for q, k, v, o of the attention; the MLA cache, latent,
//!   rope, q, o and workspace; A, B and D of the GEMM);
//! - device memory of this backend's device (`cuPointerGetAttributes`: a host pointer or a
//!   pointer of another GPU is an [`Error::InvalidArgument`] naming the argument);
//!
//! and the stream must belong to this backend's context (the device's primary context, the one
//! the CUDA runtime, and so PyTorch, uses). What cannot be checked is the caller's word (see
//! each function's `# Safety`): that each span really is `len` elements of live memory, that
//! outputs overlap nothing else, and that nothing else uses them until the stream has run the
//! launch.
//!
//! The launches are asynchronous on the caller's stream, allocate nothing, copy nothing, create
//! and record no events and never synchronize, so they can be captured into a CUDA graph. Two
//! things on the first call of a shape class happen on the host and may block: loading the
//! kernel (NVRTC compile or disk cache), and, with `TESSERA_TUNE=1` only, timing the candidates
//! on the backend's own stream (do not set it while capturing; run `tessera tune` beforehand).
//!
//! How: the spans are wrapped, without ownership, into `cudarc` views of a second handle on the
//! same primary context whose event tracking is off (so no event is created, waited for or
//! recorded), and the `*_on` methods run on them: one set of checks and one launch path for both
//! APIs.

use crate::ops::attention::{DeviceBlockMask, HalfElement};
use crate::ops::attention_backward::AttentionBackwardBuffers;
use crate::ops::fp8::DeviceInput;
use crate::ops::mla::{MlaAppendBuffers, MlaDecodeBuffers, MlaDecodePlan, MlaDecodeVarlenBuffers};
use crate::runtime::driver_error;
use crate::CudaBackend;
use cudarc::driver::sys;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut};
use half::{bf16, f16};
use std::mem::ManuallyDrop;
use std::sync::Arc;
use tessera_core::ops::attention::SparseAttention;
use tessera_core::{
    BlockMask, DType, Error, Fp8Gemm, Fp8Quantize, MlaAppend, MlaCacheLayout, MlaDecode,
    MlaDecodeVarlen, Result,
};

/// A CUDA stream handle (`CUstream`) of the caller: `torch.cuda.current_stream().cuda_stream`,
/// candle's `CudaStream::cu_stream()`, or a `cudaStream_t` (the same handle). Null is the
/// legacy default stream.
pub type RawStream = sys::CUstream;

/// `len` elements of device memory starting at device address `address` (a `CUdeviceptr`,
/// e.g. `tensor.data_ptr()`). The element type is the argument's (each function says it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSpan {
    /// The device address of the first element.
    pub address: u64,
    /// Number of elements.
    pub len: usize,
}

impl DeviceSpan {
    /// `len` elements at `address`.
    pub const fn new(address: u64, len: usize) -> Self {
        Self { address, len }
    }

    /// No elements (for arguments an op does not read, e.g. the rope of a layout without one,
    /// or the workspace of a one-split decode).
    pub const EMPTY: DeviceSpan = DeviceSpan { address: 0, len: 0 };
}

/// Device spans of [`CudaBackend::sparse_attention_backward_raw`] (types and layouts as
/// [`AttentionBackwardBuffers`]: q, k, v, o, d_o, dq, dk, dv of the op's dtype
/// `[batch, tokens, heads, head_dim]`, 16-byte aligned; lse and delta f32
/// `[batch, heads, tokens]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionBackwardSpans {
    /// The forward's queries.
    pub q: DeviceSpan,
    /// The forward's keys.
    pub k: DeviceSpan,
    /// The forward's values.
    pub v: DeviceSpan,
    /// The forward's output.
    pub o: DeviceSpan,
    /// The forward's log-sum-exp (natural log).
    pub lse: DeviceSpan,
    /// The gradient of the loss with respect to o.
    pub d_o: DeviceSpan,
    /// Workspace: `rowsum(d_o ∘ o)`.
    pub delta: DeviceSpan,
    /// Output: the gradient with respect to q.
    pub dq: DeviceSpan,
    /// Output: the gradient with respect to k.
    pub dk: DeviceSpan,
    /// Output: the gradient with respect to v.
    pub dv: DeviceSpan,
}

/// Device spans of [`CudaBackend::mla_append_raw`] (types and layouts as [`MlaAppendBuffers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaAppendSpans {
    /// The paged cache, u8 `[num_pages, page_size, token_bytes]`.
    pub cache: DeviceSpan,
    /// bf16 `[tokens, latent_dim]`.
    pub latent: DeviceSpan,
    /// bf16 `[tokens, rope_dim]`.
    pub rope: DeviceSpan,
    /// i32 `[tokens]`: the slot of each token (negative or out of range: skipped).
    pub slots: DeviceSpan,
}

/// Device spans of [`CudaBackend::mla_decode_raw`] (types and layouts as [`MlaDecodeBuffers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaDecodeSpans {
    /// The paged cache, u8 `[num_pages, page_size, token_bytes]`.
    pub cache: DeviceSpan,
    /// bf16 `[batch, s_q, heads, latent_dim + rope_dim]`.
    pub q: DeviceSpan,
    /// i32 `[batch, max_pages]`.
    pub block_table: DeviceSpan,
    /// i32 `[batch]`.
    pub seq_lens: DeviceSpan,
    /// Output bf16 `[batch, s_q, heads, latent_dim]`.
    pub o: DeviceSpan,
    /// Output f32 `[batch, heads, s_q]`, natural log.
    pub lse: DeviceSpan,
    /// f32 scratch of at least [`MlaDecodePlan::workspace_len`] elements
    /// ([`DeviceSpan::EMPTY`] when that is 0).
    pub workspace: DeviceSpan,
}

/// Device spans of [`CudaBackend::mla_decode_varlen_raw`] (types and layouts as
/// [`MlaDecodeVarlenBuffers`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaDecodeVarlenSpans {
    /// The paged cache, u8 `[num_pages, page_size, token_bytes]`.
    pub cache: DeviceSpan,
    /// bf16 `[total_q, heads, latent_dim + rope_dim]`.
    pub q: DeviceSpan,
    /// i32 `[batch + 1]`: request `b`'s queries are `cu_seqlens_q[b] .. cu_seqlens_q[b + 1]`.
    pub cu_seqlens_q: DeviceSpan,
    /// i32 `[batch, max_pages]`.
    pub block_table: DeviceSpan,
    /// i32 `[batch]`.
    pub seq_lens: DeviceSpan,
    /// Output bf16 `[total_q, heads, latent_dim]`.
    pub o: DeviceSpan,
    /// Output f32 `[heads, total_q]`, natural log.
    pub lse: DeviceSpan,
    /// f32 scratch of at least [`MlaDecodePlan::workspace_len`] elements
    /// ([`DeviceSpan::EMPTY`] when that is 0).
    pub workspace: DeviceSpan,
}

/// A second handle on the device's primary context, with cudarc's event tracking off: views
/// made on it record and wait for no events.
pub(crate) fn untracked_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    let ctx = CudaContext::new(ordinal)
        .map_err(|e| driver_error("retaining the primary context for the raw API", e))?;
    // SAFETY: this handle is used only by the raw API, whose buffers are the caller's (never
    // allocated or freed through cudarc) and whose ordering is the caller's stream: no cudarc
    // buffer of this handle needs events. Buffers of the backend's own handle keep theirs.
    unsafe { ctx.disable_event_tracking() };
    Ok(ctx)
}

/// A caller's device range lent to cudarc as a slice it does not own: dropping it forgets the
/// slice (never frees the memory).
struct Lent<T>(ManuallyDrop<CudaSlice<T>>);

impl<T> Lent<T> {
    fn view(&self) -> CudaView<'_, T> {
        self.0.slice(0..self.0.len())
    }

    fn view_mut(&mut self) -> CudaViewMut<'_, T> {
        let len = self.0.len();
        self.0.slice_mut(0..len)
    }
}

impl<T> Drop for Lent<T> {
    fn drop(&mut self) {
        // SAFETY: the slice is taken once, here, and not used again.
        let slice = unsafe { ManuallyDrop::take(&mut self.0) };
        // The memory is the caller's: give back the address without freeing it (no events to
        // wait for: the context does not track them).
        let _ = slice.leak();
    }
}

/// The error of an attention op whose dtype is not a 16-bit float.
fn invalid_half(op: &'static str, dtype: DType) -> Error {
    Error::invalid(op, "dtype", "f16 or bf16", dtype.name())
}

/// The caller's stream wrapped for one call, and the checks every span goes through.
struct RawCall {
    op: &'static str,
    stream: Arc<CudaStream>,
    ordinal: i32,
}

impl RawCall {
    /// Wraps `stream` after checking that it belongs to the backend's context.
    ///
    /// # Safety
    /// `stream` must be a live stream handle (or null) that stays alive during the call.
    unsafe fn new(backend: &CudaBackend, op: &'static str, stream: RawStream) -> Result<Self> {
        let ctx = &backend.raw_ctx;
        ctx.bind_to_thread()
            .map_err(|e| driver_error("binding the CUDA context", e))?;
        let mut owner: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: `stream` is live (the caller's contract); `owner` is a valid out-pointer.
        let status = unsafe { sys::cuStreamGetCtx(stream, &mut owner) };
        if status != sys::CUresult::CUDA_SUCCESS || owner != ctx.cu_ctx() {
            return Err(Error::invalid(
                op,
                "stream",
                format!(
                    "a stream of device {}'s primary context",
                    backend.raw_ctx.ordinal()
                ),
                format!("{stream:?} ({status:?}, context {owner:?})"),
            ));
        }
        // SAFETY: the handle is live for the call (above); the wrapper never destroys it.
        let wrapped = unsafe { ctx.wrap_borrowed_stream(stream) };
        Ok(Self {
            op,
            stream: wrapped,
            ordinal: backend.raw_ctx.ordinal() as i32,
        })
    }

    /// Checks `span` (`T` elements named `arg`) and lends it to cudarc.
    ///
    /// # Safety
    /// `span` must be `span.len` elements of live device memory (the caller's contract).
    unsafe fn lend<T>(&self, arg: &str, span: DeviceSpan) -> Result<Lent<T>> {
        let size = std::mem::size_of::<T>() as u64;
        if span.len > 0 {
            let bytes = (span.len as u64).checked_mul(size);
            if span.address == 0 {
                return Err(Error::invalid(
                    self.op,
                    arg,
                    "a device address (not null)",
                    "0x0",
                ));
            }
            if span.address % size != 0 {
                return Err(Error::invalid(
                    self.op,
                    arg,
                    format!("a device address aligned to {size} bytes"),
                    format!("{:#x}", span.address),
                ));
            }
            if bytes.and_then(|b| span.address.checked_add(b)).is_none() {
                return Err(Error::invalid(
                    self.op,
                    arg,
                    "a span inside the address space",
                    format!("{} elements at {:#x}", span.len, span.address),
                ));
            }
            let mut memory_type: u32 = 0;
            let mut device: i32 = -1;
            let mut attributes = [
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
            ];
            let mut data = [
                &mut memory_type as *mut u32 as *mut std::ffi::c_void,
                &mut device as *mut i32 as *mut std::ffi::c_void,
            ];
            // SAFETY: two attributes with an out-pointer each (a CUmemorytype as u32, an int);
            // the address is only looked up, never dereferenced. Unlike cuPointerGetAttribute,
            // an address CUDA does not know is not an error here (memory type 0), so a host
            // pointer is rejected below without a failed driver call.
            let status = unsafe {
                sys::cuPointerGetAttributes(
                    attributes.len() as u32,
                    attributes.as_mut_ptr(),
                    data.as_mut_ptr(),
                    span.address,
                )
            };
            let on_device = memory_type == sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32;
            if status != sys::CUresult::CUDA_SUCCESS || !on_device || device != self.ordinal {
                let got = if status != sys::CUresult::CUDA_SUCCESS {
                    format!("{:#x}, not CUDA device memory ({status:?})", span.address)
                } else if !on_device {
                    format!(
                        "{:#x}, not CUDA device memory (memory type {memory_type})",
                        span.address
                    )
                } else {
                    format!("memory of device {device} at {:#x}", span.address)
                };
                return Err(Error::invalid(
                    self.op,
                    arg,
                    format!("memory of CUDA device {}", self.ordinal),
                    got,
                ));
            }
        }
        // SAFETY: the range is the caller's live device memory (contract); the slice is never
        // freed (`Lent` forgets it) and has no events (the context does not track them).
        Ok(Lent(ManuallyDrop::new(unsafe {
            self.stream.upgrade_device_ptr::<T>(span.address, span.len)
        })))
    }
}

impl CudaBackend {
    /// Uploads `mask` for [`CudaBackend::sparse_attention_raw`] (and `sparse_attention_on`) and
    /// waits for the copy, so that the mask is ready for work on any stream.
    pub fn upload_block_mask(&self, mask: &BlockMask) -> Result<DeviceBlockMask> {
        let device_mask = DeviceBlockMask::new(self.stream(), mask)?;
        self.stream()
            .synchronize()
            .map_err(|e| driver_error("uploading the block mask", e))?;
        Ok(device_mask)
    }

    /// Block-sparse attention forward on the caller's `stream` (as
    /// [`CudaBackend::sparse_attention_on`]): reads `q`, `k`, `v` (`op.dtype`, f16 or bf16,
    /// `[batch, tokens, heads, head_dim]`, 16-byte aligned) and writes `o` (same) and `lse` (f32
    /// `[batch, heads, tokens]`). `mask` from [`CudaBackend::upload_block_mask`].
    ///
    /// # Safety
    /// Each span must be `len` live elements of its type on this device, the outputs `o` and
    /// `lse` must overlap nothing else, and nothing may write the inputs or use the outputs
    /// until `stream` has run the launch; `stream` must be live.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sparse_attention_raw(
        &self,
        stream: RawStream,
        op: &SparseAttention,
        mask: &DeviceBlockMask,
        q: DeviceSpan,
        k: DeviceSpan,
        v: DeviceSpan,
        o: DeviceSpan,
        lse: DeviceSpan,
    ) -> Result<()> {
        // SAFETY (all unsafe calls here): forwarded from this function's contract.
        let call = unsafe { RawCall::new(self, "sparse_attention", stream)? };
        match op.dtype {
            DType::F16 => unsafe { self.attention_lent::<f16>(&call, op, mask, q, k, v, o, lse) },
            DType::BF16 => unsafe { self.attention_lent::<bf16>(&call, op, mask, q, k, v, o, lse) },
            other => Err(invalid_half(call.op, other)),
        }
    }

    /// [`CudaBackend::sparse_attention_raw`] for elements `T`.
    ///
    /// # Safety
    /// As [`CudaBackend::sparse_attention_raw`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn attention_lent<T: HalfElement>(
        &self,
        call: &RawCall,
        op: &SparseAttention,
        mask: &DeviceBlockMask,
        q: DeviceSpan,
        k: DeviceSpan,
        v: DeviceSpan,
        o: DeviceSpan,
        lse: DeviceSpan,
    ) -> Result<()> {
        // SAFETY (all unsafe calls here): forwarded from this function's contract.
        let mut lse = unsafe { call.lend::<f32>("lse", lse)? };
        let (q, k, v) = unsafe {
            (
                call.lend::<T>("q", q)?,
                call.lend::<T>("k", k)?,
                call.lend::<T>("v", v)?,
            )
        };
        let mut o = unsafe { call.lend::<T>("o", o)? };
        self.sparse_attention_on(
            &call.stream,
            op,
            mask,
            &T::device(q.view()),
            &T::device(k.view()),
            &T::device(v.view()),
            &mut T::device_mut(o.view_mut()),
            &mut lse.view_mut(),
        )
    }

    /// Block-sparse attention backward on the caller's `stream` (as
    /// [`CudaBackend::sparse_attention_backward_on`]; spans as [`AttentionBackwardSpans`]):
    /// reads the forward's q, k, v, o, lse and the output gradient d_o, uses `delta` as
    /// workspace, writes dq, dk, dv. `mask` from [`CudaBackend::upload_block_mask`] (it holds
    /// the transpose the dk/dv pass walks).
    ///
    /// # Safety
    /// Each span must be `len` live elements of its type on this device, the outputs (dq, dk,
    /// dv) and `delta` must overlap nothing else, and nothing may write the inputs or use the
    /// outputs until `stream` has run the launches; `stream` must be live.
    pub unsafe fn sparse_attention_backward_raw(
        &self,
        stream: RawStream,
        op: &SparseAttention,
        mask: &DeviceBlockMask,
        spans: &AttentionBackwardSpans,
    ) -> Result<()> {
        // SAFETY (all unsafe calls here): forwarded from this function's contract.
        let call = unsafe { RawCall::new(self, "sparse_attention_backward", stream)? };
        match op.dtype {
            DType::F16 => unsafe { self.attention_backward_lent::<f16>(&call, op, mask, spans) },
            DType::BF16 => unsafe { self.attention_backward_lent::<bf16>(&call, op, mask, spans) },
            other => Err(invalid_half(call.op, other)),
        }
    }

    /// [`CudaBackend::sparse_attention_backward_raw`] for elements `T`.
    ///
    /// # Safety
    /// As [`CudaBackend::sparse_attention_backward_raw`].
    unsafe fn attention_backward_lent<T: HalfElement>(
        &self,
        call: &RawCall,
        op: &SparseAttention,
        mask: &DeviceBlockMask,
        s: &AttentionBackwardSpans,
    ) -> Result<()> {
        // SAFETY (all unsafe calls here): forwarded from this function's contract.
        let (q, k, v, o, d_o) = unsafe {
            (
                call.lend::<T>("q", s.q)?,
                call.lend::<T>("k", s.k)?,
                call.lend::<T>("v", s.v)?,
                call.lend::<T>("o", s.o)?,
                call.lend::<T>("d_o", s.d_o)?,
            )
        };
        let lse = unsafe { call.lend::<f32>("lse", s.lse)? };
        let mut delta = unsafe { call.lend::<f32>("delta", s.delta)? };
        let (mut dq, mut dk, mut dv) = unsafe {
            (
                call.lend::<T>("dq", s.dq)?,
                call.lend::<T>("dk", s.dk)?,
                call.lend::<T>("dv", s.dv)?,
            )
        };
        let mut bufs = AttentionBackwardBuffers {
            q: T::device(q.view()),
            k: T::device(k.view()),
            v: T::device(v.view()),
            o: T::device(o.view()),
            lse: lse.view(),
            d_o: T::device(d_o.view()),
            delta: delta.view_mut(),
            dq: T::device_mut(dq.view_mut()),
            dk: T::device_mut(dk.view_mut()),
            dv: T::device_mut(dv.view_mut()),
        };
        self.sparse_attention_backward_on(&call.stream, op, mask, &mut bufs)
    }

    /// Appends `op.tokens` tokens to a paged MLA cache on the caller's `stream` (as
    /// [`CudaBackend::mla_append_on`]; spans as [`MlaAppendSpans`], the cache, latent and rope
    /// 16-byte aligned).
    ///
    /// # Safety
    /// Each span must be `len` live elements of its type on this device, the cache must overlap
    /// no input, and nothing may write the inputs or use the cache until `stream` has run the
    /// launch; `stream` must be live.
    pub unsafe fn mla_append_raw(
        &self,
        stream: RawStream,
        op: &MlaAppend,
        layout: &MlaCacheLayout,
        spans: &MlaAppendSpans,
    ) -> Result<()> {
        // SAFETY (all unsafe calls here): forwarded from this function's contract.
        let call = unsafe { RawCall::new(self, "mla_append", stream)? };
        let mut cache = unsafe { call.lend::<u8>("cache", spans.cache)? };
        let latent = unsafe { call.lend::<bf16>("latent", spans.latent)? };
        let rope = unsafe { call.lend::<bf16>("rope", spans.rope)? };
        let slots = unsafe { call.lend::<i32>("slots", spans.slots)? };
        let mut bufs = MlaAppendBuffers {
            cache: cache.view_mut(),
            latent: latent.view(),
            rope: rope.view(),
            slots: slots.view(),
        };
        self.mla_append_on(&call.stream, op, layout, &mut bufs)
    }

    /// Absorbed MLA decode over a paged cache on the caller's `stream` (as
    /// [`CudaBackend::mla_decode_on`]; spans as [`MlaDecodeSpans`]; `plan` from
    /// [`CudaBackend::mla_decode_plan`] for `op`). Block-table entries and lengths live on the
    /// device and are checked by the kernel (a bad one gives NaN outputs for its request, and
    /// the cache is never read outside its pages).
    ///
    /// # Safety
    /// Each span must be `len` live elements of its type on this device, the outputs `o`, `lse`
    /// and `workspace` must overlap nothing else, and nothing may write the inputs or use the
    /// outputs until `stream` has run the launches; `stream` must be live.
    pub unsafe fn mla_decode_raw(
        &self,
        stream: RawStream,
        op: &MlaDecode,
        plan: &MlaDecodePlan,
        spans: &MlaDecodeSpans,
    ) -> Result<()> {
        // SAFETY (all unsafe calls here): forwarded from this function's contract.
        let call = unsafe { RawCall::new(self, "mla_decode", stream)? };
        let cache = unsafe { call.lend::<u8>("cache", spans.cache)? };
        let q = unsafe { call.lend::<bf16>("q", spans.q)? };
        let table = unsafe { call.lend::<i32>("block_table", spans.block_table)? };
        let lens = unsafe { call.lend::<i32>("seq_lens", spans.seq_lens)? };
        let mut o = unsafe { call.lend::<bf16>("o", spans.o)? };
        let mut lse = unsafe { call.lend::<f32>("lse", spans.lse)? };
        let mut workspace = unsafe { call.lend::<f32>("workspace", spans.workspace)? };
        let mut bufs = MlaDecodeBuffers {
            cache: cache.view(),
            q: q.view(),
            block_table: table.view(),
            seq_lens: lens.view(),
            o: o.view_mut(),
            lse: lse.view_mut(),
            workspace: workspace.view_mut(),
        };
        self.mla_decode_on(&call.stream, op, plan, &mut bufs)
    }

    /// Absorbed MLA decode with a variable query count per request on the caller's `stream` (as
    /// [`CudaBackend::mla_decode_varlen_on`]; spans as [`MlaDecodeVarlenSpans`]; `plan` from
    /// [`CudaBackend::mla_decode_varlen_plan`] for `op`). Offsets, block-table entries and
    /// lengths live on the device and are checked by the kernel.
    ///
    /// # Safety
    /// As [`CudaBackend::mla_decode_raw`].
    pub unsafe fn mla_decode_varlen_raw(
        &self,
        stream: RawStream,
        op: &MlaDecodeVarlen,
        plan: &MlaDecodePlan,
        spans: &MlaDecodeVarlenSpans,
    ) -> Result<()> {
        // SAFETY (all unsafe calls here): forwarded from this function's contract.
        let call = unsafe { RawCall::new(self, "mla_decode_varlen", stream)? };
        let cache = unsafe { call.lend::<u8>("cache", spans.cache)? };
        let q = unsafe { call.lend::<bf16>("q", spans.q)? };
        let offsets = unsafe { call.lend::<i32>("cu_seqlens_q", spans.cu_seqlens_q)? };
        let table = unsafe { call.lend::<i32>("block_table", spans.block_table)? };
        let lens = unsafe { call.lend::<i32>("seq_lens", spans.seq_lens)? };
        let mut o = unsafe { call.lend::<bf16>("o", spans.o)? };
        let mut lse = unsafe { call.lend::<f32>("lse", spans.lse)? };
        let mut workspace = unsafe { call.lend::<f32>("workspace", spans.workspace)? };
        let mut bufs = MlaDecodeVarlenBuffers {
            cache: cache.view(),
            q: q.view(),
            cu_seqlens_q: offsets.view(),
            block_table: table.view(),
            seq_lens: lens.view(),
            o: o.view_mut(),
            lse: lse.view_mut(),
            workspace: workspace.view_mut(),
        };
        self.mla_decode_varlen_on(&call.stream, op, plan, &mut bufs)
    }

    /// FP8 quantization on the caller's `stream` (as [`CudaBackend::fp8_quantize_on`]): `x` of
    /// `x_dtype` (f32, f16 or bf16) `[rows, cols]` into `values` (E4M3 bytes `[rows, cols]`) and
    /// `scales` (f32, [`Fp8Quantize::scales_shape`]).
    ///
    /// # Safety
    /// Each span must be `len` live elements of its type on this device, the outputs must
    /// overlap nothing else, and nothing may write `x` or use the outputs until `stream` has run
    /// the launch; `stream` must be live.
    pub unsafe fn fp8_quantize_raw(
        &self,
        stream: RawStream,
        op: &Fp8Quantize,
        x_dtype: DType,
        x: DeviceSpan,
        values: DeviceSpan,
        scales: DeviceSpan,
    ) -> Result<()> {
        // SAFETY (all unsafe calls here): forwarded from this function's contract.
        let call = unsafe { RawCall::new(self, "fp8_quantize", stream)? };
        let mut values = unsafe { call.lend::<u8>("values", values)? };
        let mut scales = unsafe { call.lend::<f32>("scales", scales)? };
        let (s, values, scales) = (&call.stream, &mut values.view_mut(), &mut scales.view_mut());
        match x_dtype {
            DType::F32 => {
                let x = unsafe { call.lend::<f32>("x", x)? };
                self.fp8_quantize_on(s, op, &DeviceInput::F32(x.view()), values, scales)
            }
            DType::F16 => {
                let x = unsafe { call.lend::<f16>("x", x)? };
                self.fp8_quantize_on(s, op, &DeviceInput::F16(x.view()), values, scales)
            }
            DType::BF16 => {
                let x = unsafe { call.lend::<bf16>("x", x)? };
                self.fp8_quantize_on(s, op, &DeviceInput::BF16(x.view()), values, scales)
            }
            other => Err(Error::invalid(
                "fp8_quantize",
                "x_dtype",
                "f32, f16 or bf16",
                other.name(),
            )),
        }
    }

    /// Block-scaled FP8 GEMM on the caller's `stream` (as [`CudaBackend::fp8_gemm_on`]): `a`
    /// E4M3 bytes `[m, k]`, `a_scales` f32 `[m, ceil(k/128)]`, `b` E4M3 bytes `[n, k]`,
    /// `b_scales` f32 `[ceil(n/128), ceil(k/128)]`, `d` bf16 `[m, n]`; `a`, `b`, `d` 16-byte
    /// aligned.
    ///
    /// # Safety
    /// Each span must be `len` live elements of its type on this device, `d` must overlap
    /// nothing else, and nothing may write the inputs or use `d` until `stream` has run the
    /// launch; `stream` must be live.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn fp8_gemm_raw(
        &self,
        stream: RawStream,
        op: &Fp8Gemm,
        a: DeviceSpan,
        a_scales: DeviceSpan,
        b: DeviceSpan,
        b_scales: DeviceSpan,
        d: DeviceSpan,
    ) -> Result<()> {
        // SAFETY (all unsafe calls here): forwarded from this function's contract.
        let call = unsafe { RawCall::new(self, "fp8_gemm", stream)? };
        let (a, sa) = unsafe {
            (
                call.lend::<u8>("a", a)?,
                call.lend::<f32>("a_scales", a_scales)?,
            )
        };
        let (b, sb) = unsafe {
            (
                call.lend::<u8>("b", b)?,
                call.lend::<f32>("b_scales", b_scales)?,
            )
        };
        let mut d = unsafe { call.lend::<bf16>("d", d)? };
        self.fp8_gemm_on(
            &call.stream,
            op,
            &a.view(),
            &sa.view(),
            &b.view(),
            &sb.view(),
            &mut d.view_mut(),
        )
    }

    /// Grouped block-scaled FP8 GEMM (mixture of experts) on the caller's `stream` (as
    /// [`CudaBackend::fp8_gemm_grouped_on`]; the layouts of [`tessera_core::GemmGrouping`],
    /// `groups` i32 on the device: the `groups + 1` row offsets (contiguous) or the `groups`
    /// row counts (masked)). Needs the Hopper kernel (sm_90a).
    ///
    /// # Safety
    /// Each span must be `len` live elements of its type on this device, the group layout must
    /// be valid ([`Fp8Gemm::validate_group_layout`]: it is read on the device, unchecked), `d`
    /// must overlap nothing else, and nothing may write the inputs or use `d` until `stream` has
    /// run the launch; `stream` must be live.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn fp8_gemm_grouped_raw(
        &self,
        stream: RawStream,
        op: &Fp8Gemm,
        a: DeviceSpan,
        a_scales: DeviceSpan,
        b: DeviceSpan,
        b_scales: DeviceSpan,
        groups: DeviceSpan,
        d: DeviceSpan,
    ) -> Result<()> {
        // SAFETY (all unsafe calls here): forwarded from this function's contract.
        let call = unsafe { RawCall::new(self, "fp8_gemm_grouped", stream)? };
        let (a, sa) = unsafe {
            (
                call.lend::<u8>("a", a)?,
                call.lend::<f32>("a_scales", a_scales)?,
            )
        };
        let (b, sb) = unsafe {
            (
                call.lend::<u8>("b", b)?,
                call.lend::<f32>("b_scales", b_scales)?,
            )
        };
        let groups = unsafe { call.lend::<i32>("groups", groups)? };
        let mut d = unsafe { call.lend::<bf16>("d", d)? };
        self.fp8_gemm_grouped_on(
            &call.stream,
            op,
            &a.view(),
            &sa.view(),
            &b.view(),
            &sb.view(),
            &groups.view(),
            &mut d.view_mut(),
        )
    }
}
