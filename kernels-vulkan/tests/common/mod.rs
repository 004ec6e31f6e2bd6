//! Helpers shared by the Vulkan crate's integration tests: opening the backend (or saying why
//! the test is skipped) and a caller's command buffer for the device API.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use tessera_vulkan::ash::vk;
use tessera_vulkan::{VulkanBackend, VulkanSettings};

/// Whether `TESSERA_REQUIRE_VULKAN=1`: the GPU machine's run sets it, so that a Vulkan device
/// that fails to open fails the tests instead of skipping them.
pub fn vulkan_required() -> bool {
    std::env::var("TESSERA_REQUIRE_VULKAN").is_ok_and(|v| v.trim() == "1")
}

/// Opens the backend with the environment's settings but no plan folder (so that tests which
/// expect the heuristic's picks never read plans tuned on this machine; the plan tests store
/// theirs explicitly), or prints `skipped: <why>` and returns `None` (a failure when
/// [`vulkan_required`]).
pub fn backend() -> Option<VulkanBackend> {
    backend_with(|_| {})
}

/// [`backend`] with its settings changed by `change` (e.g. no override of the MLA decode's
/// shader).
pub fn backend_with(change: impl FnOnce(&mut VulkanSettings)) -> Option<VulkanBackend> {
    let mut settings = VulkanSettings {
        plan_dir: None,
        ..VulkanSettings::from_env()
    };
    change(&mut settings);
    opened(VulkanBackend::with_settings(settings))
}

fn opened(backend: tessera_core::Result<VulkanBackend>) -> Option<VulkanBackend> {
    match backend {
        Ok(b) => Some(b),
        Err(e) => {
            if vulkan_required() {
                panic!("TESSERA_REQUIRE_VULKAN=1 but the Vulkan backend does not open: {e}");
            }
            println!("skipped: {e}");
            None
        }
    }
}

/// The caller's command pool, command buffer and fence, in the recording state from creation.
/// One per thread: nothing here touches the device or the queue beyond its own objects (the
/// queue only under the context's lock), so several may run at once.
pub struct Commands<'a> {
    pub device: &'a tessera_vulkan::ash::Device,
    pub pool: vk::CommandPool,
    pub cmd: vk::CommandBuffer,
    pub fence: vk::Fence,
    submitted: bool,
}

impl<'a> Commands<'a> {
    pub fn new(backend: &'a VulkanBackend) -> Self {
        let ctx = backend.context();
        let device = ctx.device();
        // SAFETY: valid create infos on a live device; everything is destroyed in `Drop`.
        unsafe {
            let pool = device
                .create_command_pool(
                    &vk::CommandPoolCreateInfo::default().queue_family_index(ctx.queue_family()),
                    None,
                )
                .unwrap();
            let cmd = device
                .allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default()
                        .command_pool(pool)
                        .level(vk::CommandBufferLevel::PRIMARY)
                        .command_buffer_count(1),
                )
                .unwrap()[0];
            let fence = device
                .create_fence(&vk::FenceCreateInfo::default(), None)
                .unwrap();
            device
                .begin_command_buffer(cmd, &vk::CommandBufferBeginInfo::default())
                .unwrap();
            Self {
                device,
                pool,
                cmd,
                fence,
                submitted: false,
            }
        }
    }

    /// Compute-shader writes -> compute-shader reads.
    pub fn barrier(&self) {
        let b = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::SHADER_WRITE)
            .dst_access_mask(vk::AccessFlags::SHADER_READ)];
        // SAFETY: `cmd` is recording.
        unsafe {
            self.device.cmd_pipeline_barrier(
                self.cmd,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::DependencyFlags::empty(),
                &b,
                &[],
                &[],
            )
        };
    }

    /// Ends the command buffer (with a barrier from compute-shader writes to host reads),
    /// submits it on the backend's queue (locked) and waits on its own fence.
    pub fn submit_and_wait(&mut self, backend: &VulkanBackend) {
        let b = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::SHADER_WRITE)
            .dst_access_mask(vk::AccessFlags::HOST_READ)];
        // SAFETY: `cmd` is recording; the queue is locked while submitting; the fence is new.
        unsafe {
            self.device.cmd_pipeline_barrier(
                self.cmd,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &b,
                &[],
                &[],
            );
            self.device.end_command_buffer(self.cmd).unwrap();
            let cmds = [self.cmd];
            let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
            let queue = backend.context().queue();
            self.device
                .queue_submit(*queue, &submit, self.fence)
                .unwrap();
            drop(queue);
            self.submitted = true;
            self.device
                .wait_for_fences(&[self.fence], true, u64::MAX)
                .unwrap();
        }
    }
}

impl Drop for Commands<'_> {
    fn drop(&mut self) {
        // SAFETY: a submitted command buffer was waited for on its fence in `submit_and_wait`
        // (a panic between submitting and waiting waits here); the objects are this struct's.
        unsafe {
            if self.submitted {
                let _ = self.device.wait_for_fences(&[self.fence], true, u64::MAX);
            }
            self.device.destroy_fence(self.fence, None);
            self.device.destroy_command_pool(self.pool, None);
        }
    }
}
