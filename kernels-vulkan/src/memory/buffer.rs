//! Buffers with their own memory allocation, and [`BufferRange`], the device API's view of a
//! caller's buffer.
//!
//! One allocation per buffer is enough for now (the host API allocates a few per call); a
//! sub-allocator can come when callers keep many small buffers.

use crate::command::OneShot;
use crate::device::VulkanContext;
use crate::{vk_error, vk_error_sized};
use ash::vk;
use std::ptr::NonNull;
use std::sync::Arc;
use tessera_core::{BackendKind, Error, Result};

/// A byte range of a Vulkan buffer, as the device API takes its tensors: `size` bytes from
/// `offset`. The buffer must have been created on the backend's device with
/// `STORAGE_BUFFER` usage, and `offset` must be a multiple of the device's
/// `minStorageBufferOffsetAlignment` ([`crate::VulkanFeatures::min_storage_buffer_offset_alignment`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferRange {
    /// The buffer.
    pub buffer: vk::Buffer,
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

impl BufferRange {
    /// `size` bytes of `buffer` from `offset`.
    pub fn new(buffer: vk::Buffer, offset: u64, size: u64) -> Self {
        Self {
            buffer,
            offset,
            size,
        }
    }
}

/// Where a buffer's memory lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryLocation {
    /// Host-visible and coherent (cached when the device offers it): [`Buffer::write`] and
    /// [`Buffer::read`] copy through the mapping.
    HostVisible,
    /// Device-local, not mappable: the fastest for shaders on discrete GPUs. [`Buffer::write`]
    /// and [`Buffer::read`] go through a host-visible staging buffer and a copy on the device's
    /// queue.
    DeviceLocal,
}

/// From this size on, the host API keeps a tensor in device-local memory on a discrete GPU
/// ([`MemoryLocation::for_host_api`]). Below it, a staged upload's fixed cost (an allocation
/// and a submission waited for: about 1 ms on the H200) exceeds what shaders lose by reading
/// host memory over the bus.
pub const DEVICE_LOCAL_MIN_BYTES: u64 = 1 << 20;

impl MemoryLocation {
    /// Where the host API keeps a tensor of `bytes` bytes on `ctx`'s device: device-local on a
    /// discrete GPU from [`DEVICE_LOCAL_MIN_BYTES`] on (a shader reading host-visible memory
    /// there goes over the bus), host-visible otherwise (small tensors; integrated GPUs share
    /// the memory; lavapipe is the CPU).
    pub fn for_host_api(ctx: &VulkanContext, bytes: u64) -> Self {
        if ctx.features().device_type == "Discrete" && bytes >= DEVICE_LOCAL_MIN_BYTES {
            Self::DeviceLocal
        } else {
            Self::HostVisible
        }
    }
}

/// A buffer with its own memory, usable as a storage buffer and as a transfer source and
/// destination. It keeps the device alive and is freed on drop (the caller makes sure no
/// pending GPU work still uses it).
pub struct Buffer {
    ctx: Arc<VulkanContext>,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    size: u64,
    location: MemoryLocation,
    /// The persistent mapping of host-visible memory.
    mapped: Option<NonNull<u8>>,
}

// SAFETY: the handles are plain identifiers that Vulkan allows to be used from any thread; the
// mapped pointer is written only through `&mut self` (`write`) and read through `&self` (`read`),
// so the usual borrow rules make concurrent access data-race free.
unsafe impl Send for Buffer {}
// SAFETY: as for `Send`.
unsafe impl Sync for Buffer {}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("buffer", &self.buffer)
            .field("size", &self.size)
            .field("location", &self.location)
            .finish()
    }
}

/// The first memory type allowed by `bits` with all of `required`, preferring one that also has
/// `preferred`.
fn memory_type(
    props: &vk::PhysicalDeviceMemoryProperties,
    bits: u32,
    required: vk::MemoryPropertyFlags,
    preferred: vk::MemoryPropertyFlags,
) -> Option<u32> {
    let types = &props.memory_types[..props.memory_type_count as usize];
    let fits = |i: usize, flags: vk::MemoryPropertyFlags| {
        bits & (1 << i) != 0 && types[i].property_flags.contains(flags)
    };
    (0..types.len())
        .find(|&i| fits(i, required | preferred))
        .or_else(|| (0..types.len()).find(|&i| fits(i, required)))
        .map(|i| i as u32)
}

impl Buffer {
    /// Allocates `size` bytes (at least 1) in `location`.
    ///
    /// A size no allocation of the device can have (beyond its largest memory heap, or its
    /// `maxBufferSize`, which Vulkan forbids asking for) is [`Error::OutOfMemory`] without
    /// asking the driver; a driver that runs out (e.g. beyond `maxMemoryAllocationSize`, which
    /// drivers may refuse) is [`Error::OutOfMemory`] with its `VkResult`. Either way nothing is
    /// leaked and the backend stays usable.
    pub fn new(ctx: &Arc<VulkanContext>, size: u64, location: MemoryLocation) -> Result<Self> {
        let f = ctx.features();
        let limit = f
            .max_buffer_size
            .unwrap_or(u64::MAX)
            .min(f.largest_heap_bytes);
        if size > limit {
            return Err(Error::OutOfMemory {
                backend: BackendKind::Vulkan,
                requested_bytes: Some(size),
                code: None,
                message: format!(
                    "a buffer of {size} bytes exceeds what the device can ever allocate \
                     ({limit} bytes: the smaller of its largest heap, {} bytes, and its \
                     maxBufferSize, {})",
                    f.largest_heap_bytes,
                    f.max_buffer_size
                        .map_or_else(|| "not reported".to_string(), |b| b.to_string())
                ),
            });
        }
        let device = ctx.device();
        let info = vk::BufferCreateInfo::default()
            .size(size.max(1))
            .usage(
                vk::BufferUsageFlags::STORAGE_BUFFER
                    | vk::BufferUsageFlags::TRANSFER_SRC
                    | vk::BufferUsageFlags::TRANSFER_DST,
            )
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: `info` is valid; the buffer is destroyed below on error or by `Drop`.
        let buffer = unsafe { device.create_buffer(&info, None) }
            .map_err(|e| vk_error("creating a buffer", e))?;
        let destroy_buffer = || {
            // SAFETY: `buffer` was created above and is not used after this.
            unsafe { device.destroy_buffer(buffer, None) }
        };
        // SAFETY: `buffer` is a live buffer of `device`.
        let req = unsafe { device.get_buffer_memory_requirements(buffer) };
        let (required, preferred) = match location {
            MemoryLocation::HostVisible => (
                vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT,
                vk::MemoryPropertyFlags::HOST_CACHED,
            ),
            MemoryLocation::DeviceLocal => (
                vk::MemoryPropertyFlags::DEVICE_LOCAL,
                vk::MemoryPropertyFlags::empty(),
            ),
        };
        let Some(type_index) = memory_type(
            ctx.memory_properties(),
            req.memory_type_bits,
            required,
            preferred,
        ) else {
            destroy_buffer();
            return Err(Error::Device {
                backend: BackendKind::Vulkan,
                message: format!("no {location:?} memory type for a buffer"),
            });
        };
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(type_index);
        // SAFETY: `alloc` names a memory type of this device; freed by `Drop` or below.
        let memory = match unsafe { device.allocate_memory(&alloc, None) } {
            Ok(m) => m,
            Err(e) => {
                destroy_buffer();
                return Err(vk_error_sized(
                    &format!("allocating {} bytes of {location:?} memory", req.size),
                    e,
                    Some(req.size),
                ));
            }
        };
        // SAFETY: `memory` is large enough for `buffer` (its requirements) and unbound.
        if let Err(e) = unsafe { device.bind_buffer_memory(buffer, memory, 0) } {
            // SAFETY: neither object is used after this.
            unsafe { device.free_memory(memory, None) };
            destroy_buffer();
            return Err(vk_error("binding buffer memory", e));
        }
        let mapped = if location == MemoryLocation::HostVisible {
            // SAFETY: the memory is host-visible, bound, and not mapped yet; it stays mapped
            // until it is freed (freeing unmaps it).
            match unsafe {
                device.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
            } {
                Ok(p) => NonNull::new(p.cast::<u8>()),
                Err(e) => {
                    // SAFETY: neither object is used after this.
                    unsafe { device.free_memory(memory, None) };
                    destroy_buffer();
                    return Err(vk_error("mapping a buffer", e));
                }
            }
        } else {
            None
        };
        Ok(Self {
            ctx: ctx.clone(),
            buffer,
            memory,
            size,
            location,
            mapped,
        })
    }

    /// A buffer holding `data`, padded with zero bytes to a multiple of 4 bytes (shaders read
    /// 32-bit words), where [`MemoryLocation::for_host_api`] puts it: device-local (uploaded
    /// through a staging buffer) when it is large and the GPU discrete, host-visible otherwise.
    pub fn from_bytes(ctx: &Arc<VulkanContext>, data: &[u8]) -> Result<Self> {
        let size = (data.len() as u64).div_ceil(4) * 4;
        let mut b = Self::new(ctx, size, MemoryLocation::for_host_api(ctx, size))?;
        let mut padded = data.to_vec();
        padded.resize(size as usize, 0);
        b.write(0, &padded)?;
        Ok(b)
    }

    /// A buffer of `size` bytes (padded to a multiple of 4, placed as by [`Buffer::from_bytes`])
    /// filled with the repeated `pattern` (e.g. the bytes of a NaN, so that elements a shader fails to write
    /// show up).
    pub fn filled(ctx: &Arc<VulkanContext>, size: usize, pattern: &[u8]) -> Result<Self> {
        let padded = size.div_ceil(4) * 4;
        // The device buffer first, so that a size the device cannot hold is refused before any
        // host memory is spent on the pattern; then the pattern in chunks of at most 256 MiB
        // (one staged upload, as before, for all but the largest buffers).
        let mut b = Self::new(
            ctx,
            padded as u64,
            MemoryLocation::for_host_api(ctx, padded as u64),
        )?;
        let pattern: &[u8] = if pattern.is_empty() { &[0] } else { pattern };
        let period = pattern.len();
        let chunk_len = padded
            .min((256 << 20) / period * period)
            .max(period.min(padded));
        let chunk: Vec<u8> = pattern.iter().copied().cycle().take(chunk_len).collect();
        let mut at = 0;
        while at < padded {
            let n = chunk_len.min(padded - at);
            b.write(at as u64, &chunk[..n])?;
            at += n;
        }
        Ok(b)
    }

    /// The raw handle.
    pub fn handle(&self) -> vk::Buffer {
        self.buffer
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where its memory lives.
    pub fn location(&self) -> MemoryLocation {
        self.location
    }

    /// The whole buffer as a [`BufferRange`].
    pub fn range(&self) -> BufferRange {
        BufferRange::new(self.buffer, 0, self.size)
    }

    /// `size` bytes from `offset` as a [`BufferRange`].
    pub fn slice(&self, offset: u64, size: u64) -> BufferRange {
        BufferRange::new(self.buffer, offset, size)
    }

    /// Checks that `len` bytes at `offset` lie inside the buffer.
    fn check_range(&self, offset: u64, len: usize, what: &str) -> Result<()> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(Error::Device {
                backend: BackendKind::Vulkan,
                message: format!(
                    "{what}: {len} bytes at {offset} do not fit a buffer of {} bytes",
                    self.size
                ),
            });
        }
        Ok(())
    }

    /// The mapping, after checking that `len` bytes at `offset` lie inside the buffer.
    fn host_ptr(&self, offset: u64, len: usize, what: &str) -> Result<NonNull<u8>> {
        self.check_range(offset, len, what)?;
        self.mapped.ok_or_else(|| Error::Device {
            backend: BackendKind::Vulkan,
            message: format!("{what}: the buffer is not host-visible"),
        })
    }

    /// Records a copy of `size` bytes from `src` at `src_offset` to `dst` at `dst_offset`
    /// between two barriers (earlier device writes before the copy reads; the copy's writes
    /// before later device and host accesses), submits it and waits.
    fn staged_copy(
        ctx: &Arc<VulkanContext>,
        src: (&Buffer, u64),
        dst: (&Buffer, u64),
        size: u64,
    ) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        let region = [vk::BufferCopy::default()
            .src_offset(src.1)
            .dst_offset(dst.1)
            .size(size)];
        let device = ctx.device();
        OneShot::new(ctx)?.run(|cmd| {
            let before = [vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::MEMORY_WRITE)
                .dst_access_mask(vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE)];
            let after = [vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::MEMORY_READ | vk::AccessFlags::HOST_READ)];
            // SAFETY: `cmd` is the one-shot's command buffer, recording; both buffers are live
            // buffers of this device with TRANSFER usage, and the region lies inside both
            // (checked by the callers).
            unsafe {
                device.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::ALL_COMMANDS,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::DependencyFlags::empty(),
                    &before,
                    &[],
                    &[],
                );
                device.cmd_copy_buffer(cmd, src.0.buffer, dst.0.buffer, &region);
                device.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::ALL_COMMANDS | vk::PipelineStageFlags::HOST,
                    vk::DependencyFlags::empty(),
                    &after,
                    &[],
                    &[],
                );
            }
            Ok(())
        })
    }

    /// Copies `data` into the buffer at byte `offset`: through the mapping for a host-visible
    /// buffer (coherent memory, no flush needed), through a staging buffer and a copy on the
    /// device's queue (waited for) for a device-local one. The caller makes sure no GPU work
    /// uses those bytes meanwhile.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if self.mapped.is_none() {
            self.check_range(offset, data.len(), "writing a buffer")?;
            let mut staging = Self::new(&self.ctx, data.len() as u64, MemoryLocation::HostVisible)?;
            staging.write(0, data)?;
            return Self::staged_copy(&self.ctx, (&staging, 0), (self, offset), data.len() as u64);
        }
        let ptr = self.host_ptr(offset, data.len(), "writing a buffer")?;
        // SAFETY: the mapping covers the whole buffer and the range was checked against its
        // size; `&mut self` excludes any other host access through this buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                ptr.as_ptr().add(offset as usize),
                data.len(),
            )
        };
        Ok(())
    }

    /// Reads `len` bytes from byte `offset`, after the GPU work writing them has completed:
    /// through the mapping for a host-visible buffer, through a copy into a staging buffer
    /// (submitted and waited for) for a device-local one.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        if self.mapped.is_none() {
            self.check_range(offset, len, "reading a buffer")?;
            let staging = Self::new(&self.ctx, len as u64, MemoryLocation::HostVisible)?;
            Self::staged_copy(&self.ctx, (self, offset), (&staging, 0), len as u64)?;
            return staging.read(0, len);
        }
        let ptr = self.host_ptr(offset, len, "reading a buffer")?;
        let mut out = vec![0u8; len];
        // SAFETY: as in `write`; `out` holds `len` bytes; host writes need `&mut self`.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr.as_ptr().add(offset as usize), out.as_mut_ptr(), len)
        };
        Ok(out)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: both objects belong to the context's device, which this buffer keeps alive;
        // the owner guarantees that no pending work uses them.
        unsafe {
            self.ctx.device().destroy_buffer(self.buffer, None);
            self.ctx.device().free_memory(self.memory, None);
        }
    }
}
