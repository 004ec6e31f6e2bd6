//! One-shot submission for the host API: record into the backend's own command buffer, submit,
//! wait.

use crate::device::VulkanContext;
use crate::vk_error;
use ash::vk;
use std::sync::{Arc, Mutex};
use tessera_core::{BackendKind, Error, Result};

/// How long the host API waits for the device before giving up (lavapipe is slow, but not this
/// slow).
const TIMEOUT_NS: u64 = 600 * 1_000_000_000;

/// A command pool with one command buffer and a fence, used by one submission at a time.
#[derive(Debug)]
pub(crate) struct OneShot {
    ctx: Arc<VulkanContext>,
    inner: Mutex<Handles>,
}

#[derive(Debug)]
struct Handles {
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
}

impl OneShot {
    pub(crate) fn new(ctx: &Arc<VulkanContext>) -> Result<Self> {
        let device = ctx.device();
        let info = vk::CommandPoolCreateInfo::default().queue_family_index(ctx.queue_family());
        // SAFETY: `info` is valid; the pool is destroyed by `Drop` (or below on error).
        let pool = unsafe { device.create_command_pool(&info, None) }
            .map_err(|e| vk_error("creating a command pool", e))?;
        let alloc = vk::CommandBufferAllocateInfo::default()
            .command_pool(pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: `pool` is live; the buffer is freed with the pool.
        let cmd = match unsafe { device.allocate_command_buffers(&alloc) } {
            Ok(c) => c[0],
            Err(e) => {
                // SAFETY: unused.
                unsafe { device.destroy_command_pool(pool, None) };
                return Err(vk_error("allocating a command buffer", e));
            }
        };
        // SAFETY: a plain fence; destroyed by `Drop` (or below on error).
        let fence = match unsafe { device.create_fence(&vk::FenceCreateInfo::default(), None) } {
            Ok(f) => f,
            Err(e) => {
                // SAFETY: unused.
                unsafe { device.destroy_command_pool(pool, None) };
                return Err(vk_error("creating a fence", e));
            }
        };
        Ok(Self {
            ctx: ctx.clone(),
            inner: Mutex::new(Handles { pool, cmd, fence }),
        })
    }

    /// Records with `record`, submits to the context's queue and waits for completion. One call
    /// at a time (others wait on the lock).
    pub(crate) fn run(&self, record: impl FnOnce(vk::CommandBuffer) -> Result<()>) -> Result<()> {
        let h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let device = self.ctx.device();
        // SAFETY: the pool and its buffer are used only under this lock, and the previous
        // submission was waited for (or never happened), so resetting is allowed.
        unsafe {
            device
                .reset_command_pool(h.pool, vk::CommandPoolResetFlags::empty())
                .map_err(|e| vk_error("resetting the command pool", e))?;
            device
                .begin_command_buffer(
                    h.cmd,
                    &vk::CommandBufferBeginInfo::default()
                        .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
                )
                .map_err(|e| vk_error("beginning a command buffer", e))?;
        }
        record(h.cmd)?;
        let cmds = [h.cmd];
        let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
        // SAFETY: `cmd` is recording (begun above) and recorded by `record`; the fence is
        // unsignaled (reset after every wait); the queue is locked for the submission.
        unsafe {
            device
                .end_command_buffer(h.cmd)
                .map_err(|e| vk_error("ending a command buffer", e))?;
            let queue = self.ctx.queue();
            device
                .queue_submit(*queue, &submit, h.fence)
                .map_err(|e| vk_error("submitting", e))?;
        }
        // SAFETY: the fence belongs to this device.
        let waited = unsafe { device.wait_for_fences(&[h.fence], true, TIMEOUT_NS) };
        match waited {
            Ok(()) => {
                // SAFETY: the fence is signaled and no longer in use.
                unsafe { device.reset_fences(&[h.fence]) }
                    .map_err(|e| vk_error("resetting a fence", e))?;
                Ok(())
            }
            Err(vk::Result::TIMEOUT) => {
                // The work is still in flight: wait for the whole device so that the buffers
                // it uses may be freed, then report.
                // SAFETY: waiting has no preconditions beyond a live device.
                let _ = unsafe { device.device_wait_idle() };
                // SAFETY: the fence is no longer in use after the idle wait.
                let _ = unsafe { device.reset_fences(&[h.fence]) };
                Err(Error::Device {
                    backend: BackendKind::Vulkan,
                    message: format!(
                        "the device did not finish within {} s",
                        TIMEOUT_NS / 1_000_000_000
                    ),
                })
            }
            Err(e) => Err(vk_error("waiting for the device", e)),
        }
    }
}

impl Drop for OneShot {
    fn drop(&mut self) {
        let h = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        // SAFETY: every submission was waited for in `run`; the objects belong to the device
        // kept alive by `ctx`.
        unsafe {
            self.ctx.device().destroy_fence(h.fence, None);
            self.ctx.device().destroy_command_pool(h.pool, None);
        }
    }
}
