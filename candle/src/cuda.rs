//! candle's CUDA storage handed to Tessera's CUDA backend (`tessera_cuda`'s `*_on` API over
//! cudarc views): zero copy, on candle's stream. candle-core 0.11 and tessera-cuda share one
//! cudarc (0.19), so candle's `CudaSlice`s and `CudaStream` are the types the `*_on` methods
//! take. The backend of each GPU is opened once per process (its kernels are compiled once);
//! outputs are new storage on candle's device (allocated on candle's stream), and every launch
//! goes on the stream of the op's first tensor. With candle's event tracking (its default),
//! cudarc orders the launches after the writes of every argument, whatever stream made them.

use crate::storage::{candle_error, contiguous_range, invalid};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice};
use candle_core::{CudaDevice, CudaStorage, Layout, Storage};
use std::sync::{Arc, Mutex};
use tessera_core::BlockMask;
use tessera_cuda::{CudaBackend, DeviceBlockMask, DeviceHalf, DeviceInput};

/// The backend of CUDA device `ordinal`, opened on first use.
fn backend(ordinal: usize) -> candle_core::Result<Arc<CudaBackend>> {
    static OPENED: Mutex<Vec<(usize, Arc<CudaBackend>)>> = Mutex::new(Vec::new());
    let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, b)) = opened.iter().find(|(o, _)| *o == ordinal) {
        return Ok(b.clone());
    }
    let b = Arc::new(CudaBackend::with_ordinal(ordinal).map_err(candle_error)?);
    opened.push((ordinal, b.clone()));
    Ok(b)
}

/// One op's forward on candle's CUDA storage: the backend of the GPU of the op's first tensor,
/// that tensor's device and stream.
pub(crate) struct CudaCall {
    op: &'static str,
    /// Tessera's backend on this GPU.
    pub(crate) backend: Arc<CudaBackend>,
    /// candle's device of the first tensor (outputs are allocated on it).
    device: CudaDevice,
    /// candle's stream of that device: every launch goes there.
    pub(crate) stream: Arc<CudaStream>,
}

impl CudaCall {
    /// The call on the device of `first` (the op's first tensor).
    pub(crate) fn new(op: &'static str, first: &CudaStorage) -> candle_core::Result<Self> {
        let device = first.device.clone();
        let stream = device.cuda_stream();
        let backend = backend(stream.context().ordinal())?;
        Ok(Self {
            op,
            backend,
            device,
            stream,
        })
    }

    fn ordinal(&self) -> usize {
        self.stream.context().ordinal()
    }

    /// The CUDA storage of a tensor the op holds (`arg`), checked to be on this GPU (candle
    /// checks the op's arguments itself).
    pub(crate) fn same_gpu<'s>(
        &self,
        arg: &str,
        s: &'s Storage,
    ) -> candle_core::Result<&'s CudaStorage> {
        match s {
            Storage::Cuda(c) if c.device.cuda_stream().context().ordinal() == self.ordinal() => {
                Ok(c)
            }
            Storage::Cuda(c) => Err(invalid(
                self.op,
                arg,
                format!("a tensor on CUDA device {}", self.ordinal()),
                format!(
                    "a tensor on CUDA device {}",
                    c.device.cuda_stream().context().ordinal()
                ),
            )),
            other => Err(invalid(
                self.op,
                arg,
                format!("a tensor on CUDA device {}", self.ordinal()),
                format!("a tensor on {:?}", other.device().location()),
            )),
        }
    }

    /// A new output of `len` elements on candle's device, on its stream, not initialised: the
    /// op's kernel writes every element.
    pub(crate) fn output<T: DeviceRepr>(&self, len: usize) -> candle_core::Result<CudaSlice<T>> {
        // SAFETY: the memory is only read after the launch that writes all of it (each caller's
        // op writes every element of this output); on an error before that launch it is freed
        // unread.
        unsafe { self.stream.alloc::<T>(len.max(1)) }
            .map_err(|e| candle_core::Error::Msg(format!("{}: allocating an output: {e}", self.op)))
    }

    /// A new zeroed scratch buffer of `len` elements (at least one) on candle's device.
    pub(crate) fn scratch<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> candle_core::Result<CudaSlice<T>> {
        self.stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(|e| candle_core::Error::Msg(format!("{}: allocating scratch: {e}", self.op)))
    }

    /// `slice` as candle storage of this device.
    pub(crate) fn cuda_storage<T: CudaDType>(&self, slice: CudaSlice<T>) -> CudaStorage {
        CudaStorage::wrap_cuda_slice(slice, self.device.clone())
    }
}

/// Where a mask was uploaded: the GPU, the stream handle and the thread (candle's default
/// stream is the per-thread stream, one handle for a different stream on each thread).
type MaskKey = (usize, usize, std::thread::ThreadId);

/// A block mask uploaded for the attention, kept by the op for the next forwards on the same
/// stream (uploaded again for another stream, thread or GPU).
pub(crate) struct MaskOnDevice(Mutex<Option<(MaskKey, Arc<DeviceBlockMask>)>>);

impl MaskOnDevice {
    /// Nothing uploaded yet.
    pub(crate) fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// `mask` on the call's GPU, uploaded on its stream (ordered before the call's launch; no
    /// synchronization) unless the last call on this stream uploaded it.
    pub(crate) fn get(
        &self,
        call: &CudaCall,
        mask: &BlockMask,
    ) -> candle_core::Result<Arc<DeviceBlockMask>> {
        let key: MaskKey = (
            call.ordinal(),
            call.stream.cu_stream() as usize,
            std::thread::current().id(),
        );
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, m)) = &*kept {
            if *k == key {
                return Ok(m.clone());
            }
        }
        let m = Arc::new(DeviceBlockMask::new(&call.stream, mask).map_err(candle_error)?);
        *kept = Some((key, m.clone()));
        Ok(m)
    }
}

/// The contiguous elements of `slice` that `layout` covers, or an error naming `arg`.
fn view<'a, T>(
    op: &'static str,
    arg: &str,
    slice: &'a CudaSlice<T>,
    layout: &Layout,
) -> candle_core::Result<CudaView<'a, T>> {
    let (start, end) = contiguous_range(op, arg, layout)?;
    Ok(slice.slice(start..end))
}

/// The element type of a CUDA storage, for messages.
fn dtype_name(s: &CudaStorage) -> String {
    format!("dtype {:?}", s.dtype())
}

macro_rules! typed_view {
    ($name:ident, $variant:ident, $t:ty, $what:literal) => {
        /// The contiguous elements of a CUDA tensor argument of this element type, or an error
        /// naming it.
        pub(crate) fn $name<'a>(
            op: &'static str,
            arg: &str,
            s: &'a CudaStorage,
            layout: &Layout,
        ) -> candle_core::Result<CudaView<'a, $t>> {
            match &s.slice {
                CudaStorageSlice::$variant(v) => view(op, arg, v, layout),
                _ => Err(invalid(op, arg, $what, dtype_name(s))),
            }
        }
    };
}

typed_view!(u8_view, U8, u8, "dtype u8");
typed_view!(f32_view, F32, f32, "dtype f32");
typed_view!(bf16_view, BF16, half::bf16, "dtype bf16");
typed_view!(
    i32_view,
    I32,
    i32,
    "dtype i32 (the CUDA kernels read i32 indices; an i64 tensor is accepted on the CPU only)"
);

/// The contiguous bytes of a u8 CUDA tensor the op writes (the MLA cache's pages).
pub(crate) fn u8_view_mut<'a>(
    op: &'static str,
    arg: &str,
    s: &'a mut CudaStorage,
    layout: &Layout,
) -> candle_core::Result<CudaViewMut<'a, u8>> {
    let dtype = dtype_name(s);
    let (start, end) = contiguous_range(op, arg, layout)?;
    match &mut s.slice {
        CudaStorageSlice::U8(v) => Ok(v.slice_mut(start..end)),
        _ => Err(invalid(op, arg, "dtype u8", dtype)),
    }
}

/// A 16-bit float CUDA tensor argument (f16 or bf16).
pub(crate) fn half_view<'a>(
    op: &'static str,
    arg: &str,
    s: &'a CudaStorage,
    layout: &Layout,
) -> candle_core::Result<DeviceHalf<'a>> {
    match &s.slice {
        CudaStorageSlice::F16(v) => view(op, arg, v, layout).map(DeviceHalf::F16),
        CudaStorageSlice::BF16(v) => view(op, arg, v, layout).map(DeviceHalf::BF16),
        _ => Err(invalid(op, arg, "dtype f16 or bf16", dtype_name(s))),
    }
}

/// The quantizer's input (f32, f16 or bf16).
pub(crate) fn quantizer_input<'a>(
    op: &'static str,
    arg: &str,
    s: &'a CudaStorage,
    layout: &Layout,
) -> candle_core::Result<DeviceInput<'a>> {
    match &s.slice {
        CudaStorageSlice::F32(v) => view(op, arg, v, layout).map(DeviceInput::F32),
        CudaStorageSlice::F16(v) => view(op, arg, v, layout).map(DeviceInput::F16),
        CudaStorageSlice::BF16(v) => view(op, arg, v, layout).map(DeviceInput::BF16),
        _ => Err(invalid(op, arg, "dtype f32, f16 or bf16", dtype_name(s))),
    }
}
