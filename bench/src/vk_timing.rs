//! The raw Vulkan calls of `tessera bench --backend vulkan`: a timestamp query pool with its own
//! command buffer and fence ([`Timer`]), device-local buffers filled from a repeated host
//! pattern ([`device_buffer`]) and read back ([`download`]).
//!
//! A batch is one command buffer: a timestamp (top of pipe), `n` recordings of the op with a
//! global memory barrier (compute and transfer writes -> reads and writes) after each, a second
//! timestamp (bottom of pipe); the per-dispatch time is the difference over `n`, in ns through
//! the device's `timestampPeriod`.

use std::sync::Arc;

use tessera::vulkan::ash::vk;
use tessera::vulkan::{Buffer, MemoryLocation, VulkanBackend, VulkanContext};

type Res<T> = Result<T, String>;

/// How long a batch may take before the wait gives up.
const TIMEOUT_NS: u64 = 300 * 1_000_000_000;
/// Bytes of the host staging buffer used to fill device buffers.
const STAGING_BYTES: usize = 64 << 20;

/// A command pool, command buffer, fence and a query pool of two timestamps.
pub struct Timer {
    ctx: Arc<VulkanContext>,
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    queries: vk::QueryPool,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
    /// Mask of the valid timestamp bits.
    mask: u64,
}

impl Timer {
    /// Checks that the queue writes timestamps and creates the objects.
    pub fn new(backend: &VulkanBackend) -> Res<Self> {
        let ctx = backend.context().clone();
        let instance = ctx.instance();
        // SAFETY: the physical device belongs to this live instance.
        let props = unsafe { instance.get_physical_device_properties(ctx.physical_device()) };
        // SAFETY: as above.
        let families =
            unsafe { instance.get_physical_device_queue_family_properties(ctx.physical_device()) };
        let bits = families
            .get(ctx.queue_family() as usize)
            .map_or(0, |f| f.timestamp_valid_bits);
        if bits == 0 {
            return Err(format!(
                "the compute queue family writes no timestamps (timestampValidBits 0, \
                 timestampComputeAndGraphics {})",
                props.limits.timestamp_compute_and_graphics
            ));
        }
        let period_ns = f64::from(props.limits.timestamp_period);
        if !period_ns.is_finite() || period_ns <= 0.0 {
            return Err(format!("timestampPeriod {period_ns}"));
        }
        let mask = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let device = ctx.device();
        // SAFETY: valid create infos on a live device; every object is destroyed in `Drop`
        // (or here on error, when nothing else uses it).
        unsafe {
            let pool = device
                .create_command_pool(
                    &vk::CommandPoolCreateInfo::default().queue_family_index(ctx.queue_family()),
                    None,
                )
                .map_err(|e| format!("command pool: {e}"))?;
            let cmd = match device.allocate_command_buffers(
                &vk::CommandBufferAllocateInfo::default()
                    .command_pool(pool)
                    .level(vk::CommandBufferLevel::PRIMARY)
                    .command_buffer_count(1),
            ) {
                Ok(c) => c[0],
                Err(e) => {
                    device.destroy_command_pool(pool, None);
                    return Err(format!("command buffer: {e}"));
                }
            };
            let fence = match device.create_fence(&vk::FenceCreateInfo::default(), None) {
                Ok(f) => f,
                Err(e) => {
                    device.destroy_command_pool(pool, None);
                    return Err(format!("fence: {e}"));
                }
            };
            let queries = match device.create_query_pool(
                &vk::QueryPoolCreateInfo::default()
                    .query_type(vk::QueryType::TIMESTAMP)
                    .query_count(2),
                None,
            ) {
                Ok(q) => q,
                Err(e) => {
                    device.destroy_fence(fence, None);
                    device.destroy_command_pool(pool, None);
                    return Err(format!("query pool: {e}"));
                }
            };
            Ok(Self {
                ctx: ctx.clone(),
                pool,
                cmd,
                fence,
                queries,
                period_ns,
                mask,
            })
        }
    }

    /// Nanoseconds per tick (`timestampPeriod`).
    pub fn period_ns(&self) -> f64 {
        self.period_ns
    }

    /// Records `n` calls of `record(cmd, i)` between two timestamps, each followed by a memory
    /// barrier, submits, waits, and returns the milliseconds between the timestamps.
    pub fn batch(
        &self,
        n: usize,
        mut record: impl FnMut(vk::CommandBuffer, usize) -> Res<()>,
    ) -> Res<f64> {
        let device = self.ctx.device();
        let cmd = self.cmd;
        let stages = vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER;
        let barrier = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(
                vk::AccessFlags::SHADER_READ
                    | vk::AccessFlags::SHADER_WRITE
                    | vk::AccessFlags::TRANSFER_READ
                    | vk::AccessFlags::TRANSFER_WRITE,
            )];
        // SAFETY: the previous submission of `cmd` was waited for (or there was none), so the
        // pool may be reset; `cmd` is then recording, and the query pool holds 2 queries.
        unsafe {
            device
                .reset_command_pool(self.pool, vk::CommandPoolResetFlags::empty())
                .map_err(|e| format!("reset command pool: {e}"))?;
            device
                .begin_command_buffer(
                    cmd,
                    &vk::CommandBufferBeginInfo::default()
                        .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
                )
                .map_err(|e| format!("begin command buffer: {e}"))?;
            device.cmd_reset_query_pool(cmd, self.queries, 0, 2);
            device.cmd_write_timestamp(cmd, vk::PipelineStageFlags::TOP_OF_PIPE, self.queries, 0);
        }
        let mut recorded = Ok(());
        for i in 0..n {
            recorded = record(cmd, i);
            if recorded.is_err() {
                break;
            }
            // SAFETY: `cmd` is recording.
            unsafe {
                device.cmd_pipeline_barrier(
                    cmd,
                    stages,
                    stages,
                    vk::DependencyFlags::empty(),
                    &barrier,
                    &[],
                    &[],
                )
            };
        }
        // SAFETY: `cmd` is recording; it is ended (even after a failed recording, so that the
        // pool can be reset next time) and submitted with the unsignaled fence under the queue
        // lock; the wait covers everything it uses.
        unsafe {
            device.cmd_write_timestamp(
                cmd,
                vk::PipelineStageFlags::BOTTOM_OF_PIPE,
                self.queries,
                1,
            );
            device
                .end_command_buffer(cmd)
                .map_err(|e| format!("end command buffer: {e}"))?;
            recorded?;
            let cmds = [cmd];
            let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
            let queue = self.ctx.queue();
            device
                .queue_submit(*queue, &submit, self.fence)
                .map_err(|e| format!("submit: {e}"))?;
            drop(queue);
            let waited = device.wait_for_fences(&[self.fence], true, TIMEOUT_NS);
            if let Err(e) = waited {
                let _ = device.device_wait_idle();
                let _ = device.reset_fences(&[self.fence]);
                return Err(format!("waiting for the batch: {e}"));
            }
            device
                .reset_fences(&[self.fence])
                .map_err(|e| format!("reset fence: {e}"))?;
        }
        let mut stamps = [0u64; 2];
        // SAFETY: both queries were written by the completed submission; 64-bit results.
        unsafe {
            device.get_query_pool_results(
                self.queries,
                0,
                &mut stamps,
                vk::QueryResultFlags::TYPE_64 | vk::QueryResultFlags::WAIT,
            )
        }
        .map_err(|e| format!("query results: {e}"))?;
        let ticks = (stamps[1] & self.mask).wrapping_sub(stamps[0] & self.mask) & self.mask;
        Ok(ticks as f64 * self.period_ns * 1e-6)
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let device = self.ctx.device();
        // SAFETY: every submission was waited for in `batch`; the objects belong to the device
        // kept alive by `ctx`.
        unsafe {
            device.destroy_query_pool(self.queries, None);
            device.destroy_fence(self.fence, None);
            device.destroy_command_pool(self.pool, None);
        }
    }
}

/// Records a copy of `size` bytes of `src` into `dst` (for the copy ceiling).
pub fn record_copy(backend: &VulkanBackend, cmd: vk::CommandBuffer, src: &Buffer, dst: &Buffer) {
    let size = src.size().min(dst.size());
    let region = [vk::BufferCopy::default().size(size)];
    // SAFETY: `cmd` is a recording command buffer of this device (the timer's); both buffers are
    // live with TRANSFER usage and hold `size` bytes.
    unsafe {
        backend
            .context()
            .device()
            .cmd_copy_buffer(cmd, src.handle(), dst.handle(), &region)
    };
}

/// A device-local buffer of `size` bytes (rounded up to 4) holding `pattern` repeated, filled
/// by copies from a host-visible staging buffer.
pub fn device_buffer(backend: &VulkanBackend, size: usize, pattern: &[u8]) -> Res<Buffer> {
    let ctx = backend.context();
    let size = size.max(1).div_ceil(4) * 4;
    let unit = pattern.len().max(1);
    let chunk = (STAGING_BYTES / unit).max(1) * unit;
    let chunk = chunk.min(size.div_ceil(unit) * unit);
    let staging = Buffer::filled(ctx, chunk, pattern).map_err(|e| e.to_string())?;
    let dst =
        Buffer::new(ctx, size as u64, MemoryLocation::DeviceLocal).map_err(|e| e.to_string())?;
    let staged = staging.size() as usize;
    let regions: Vec<vk::BufferCopy> = (0..size)
        .step_by(staged)
        .map(|off| {
            vk::BufferCopy::default()
                .src_offset(0)
                .dst_offset(off as u64)
                .size((size - off).min(staged) as u64)
        })
        .collect();
    backend
        .run_and_wait(|cmd| {
            let b = [vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE)];
            // SAFETY: `cmd` is the backend's command buffer, recording; both buffers are live
            // with TRANSFER usage and the regions lie inside them.
            unsafe {
                ctx.device()
                    .cmd_copy_buffer(cmd, staging.handle(), dst.handle(), &regions);
                ctx.device().cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::COMPUTE_SHADER,
                    vk::DependencyFlags::empty(),
                    &b,
                    &[],
                    &[],
                );
            }
            Ok(())
        })
        .map_err(|e| format!("filling a buffer: {e}"))?;
    Ok(dst)
}

/// The first `len` bytes of a (device-local) buffer, copied through a host-visible one.
pub fn download(backend: &VulkanBackend, src: &Buffer, len: usize) -> Res<Vec<u8>> {
    let ctx = backend.context();
    let len4 = len.div_ceil(4) * 4;
    let host =
        Buffer::new(ctx, len4 as u64, MemoryLocation::HostVisible).map_err(|e| e.to_string())?;
    let region = [vk::BufferCopy::default().size(len4 as u64)];
    backend
        .run_and_wait(|cmd| {
            let before = [vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::SHADER_WRITE)
                .dst_access_mask(vk::AccessFlags::TRANSFER_READ)];
            let after = [vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::HOST_READ)];
            // SAFETY: `cmd` is the backend's command buffer, recording; both buffers are live
            // with TRANSFER usage and hold `len4` bytes.
            unsafe {
                let d = ctx.device();
                d.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::COMPUTE_SHADER,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::DependencyFlags::empty(),
                    &before,
                    &[],
                    &[],
                );
                d.cmd_copy_buffer(cmd, src.handle(), host.handle(), &region);
                d.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::HOST,
                    vk::DependencyFlags::empty(),
                    &after,
                    &[],
                    &[],
                );
            }
            Ok(())
        })
        .map_err(|e| format!("reading a buffer: {e}"))?;
    host.read(0, len).map_err(|e| e.to_string())
}
