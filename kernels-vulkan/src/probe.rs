//! Finding a Vulkan loader and its devices at run time, without linking the loader.

use ash::vk;
use std::ffi::CStr;

/// One physical device as the Vulkan driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VulkanDevice {
    /// `deviceName`.
    pub name: String,
    /// Discrete, integrated, virtual, CPU or other.
    pub kind: String,
    /// `apiVersion` as `major.minor.patch`.
    pub api_version: String,
}

/// What was found of Vulkan on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VulkanProbe {
    /// The loader's instance version, or why no loader or instance could be had.
    pub loader: Result<String, String>,
    /// The physical devices (empty when there is no loader or no ICD).
    pub devices: Vec<VulkanDevice>,
}

fn version_string(v: u32) -> String {
    format!(
        "{}.{}.{}",
        vk::api_version_major(v),
        vk::api_version_minor(v),
        vk::api_version_patch(v)
    )
}

/// Looks for a Vulkan loader, creates an instance and lists the physical devices.
/// Never panics.
pub fn probe() -> VulkanProbe {
    // SAFETY: `Entry::load` dlopens the system's Vulkan loader (libvulkan.so.1) and reads its
    // entry points; the loader is built to be loaded this way.
    let entry = match unsafe { ash::Entry::load() } {
        Ok(e) => e,
        Err(e) => {
            return VulkanProbe {
                loader: Err(format!(
                    "no Vulkan loader ({e}): install it (Debian: libvulkan1) and a driver"
                )),
                devices: Vec::new(),
            }
        }
    };
    // SAFETY: `entry` holds a loaded loader; the call has no other preconditions.
    let version = match unsafe { entry.try_enumerate_instance_version() } {
        Ok(Some(v)) => v,
        Ok(None) => vk::API_VERSION_1_0,
        Err(e) => {
            return VulkanProbe {
                loader: Err(format!("the Vulkan loader failed: {e}")),
                devices: Vec::new(),
            }
        }
    };
    let app = vk::ApplicationInfo::default()
        .application_name(c"tessera-probe")
        .api_version(vk::API_VERSION_1_2);
    let create = vk::InstanceCreateInfo::default().application_info(&app);
    // SAFETY: `create` and `app` are valid, live structures; the instance is destroyed below
    // before returning.
    let instance = match unsafe { entry.create_instance(&create, None) } {
        Ok(i) => i,
        Err(e) => {
            return VulkanProbe {
                loader: Err(format!(
                    "Vulkan loader {} found, but no instance could be created ({e}): no driver (ICD) installed?",
                    version_string(version)
                )),
                devices: Vec::new(),
            }
        }
    };
    // SAFETY: `instance` is live; the properties are plain data copied out before the instance
    // is destroyed, and `deviceName` is a NUL-terminated string by the specification.
    let devices = unsafe {
        let devices = instance
            .enumerate_physical_devices()
            .unwrap_or_default()
            .into_iter()
            .map(|pd| {
                let p = instance.get_physical_device_properties(pd);
                VulkanDevice {
                    name: CStr::from_ptr(p.device_name.as_ptr())
                        .to_string_lossy()
                        .into_owned(),
                    kind: format!("{:?}", p.device_type),
                    api_version: version_string(p.api_version),
                }
            })
            .collect();
        instance.destroy_instance(None);
        devices
    };
    VulkanProbe {
        loader: Ok(format!("Vulkan loader {}", version_string(version))),
        devices,
    }
}
