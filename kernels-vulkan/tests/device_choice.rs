//! `TESSERA_VULKAN_DEVICE` picks the device by index or name, and a choice that matches nothing
//! is a clear `BackendUnavailable`. One test in its own process, since it sets the variable.

mod common;

use tessera_core::Error;
use tessera_vulkan::{VulkanBackend, DEVICE_ENV};

/// Sets or removes `TESSERA_VULKAN_DEVICE`.
fn set_device_env(value: Option<&str>) {
    // SAFETY (std's requirement for set_var / remove_var): this test binary has a single test,
    // so no other thread reads the environment concurrently.
    unsafe {
        match value {
            Some(v) => std::env::set_var(DEVICE_ENV, v),
            None => std::env::remove_var(DEVICE_ENV),
        }
    }
}

#[test]
fn device_is_chosen_by_index_or_name_and_features_are_recorded() {
    set_device_env(None);
    let Some(default) = common::backend() else {
        return;
    };
    let f = default.features().clone();
    let index = default.context().device_index();
    println!("{}\n{f:#?}", f.summary());
    assert!(f.api_version >= (1, 1, 0));
    assert!(f.subgroup_size >= 1 && f.min_subgroup_size <= f.subgroup_size);
    assert!(f.subgroup_size <= f.max_subgroup_size);
    assert!(f.subgroup_arithmetic);
    assert!(f.max_shared_memory_bytes >= 16 * 1024);
    assert!(f.max_workgroup_invocations >= 128);
    assert_eq!(
        f.cooperative_matrix,
        !f.cooperative_matrix_shapes.is_empty()
    );
    drop(default);

    set_device_env(Some(&index.to_string()));
    assert_eq!(VulkanBackend::new().unwrap().features().name, f.name);
    // A case-insensitive substring of the name.
    let part: String = f.name.chars().take(4).collect::<String>().to_uppercase();
    set_device_env(Some(&part));
    assert_eq!(VulkanBackend::new().unwrap().features().name, f.name);

    for wanted in ["no such device", "999"] {
        set_device_env(Some(wanted));
        match VulkanBackend::new() {
            Err(Error::BackendUnavailable { reason, .. }) => {
                assert!(reason.contains(DEVICE_ENV), "{reason}");
                assert!(
                    reason.contains(&f.name),
                    "the reason lists the devices: {reason}"
                );
            }
            other => panic!("{wanted:?}: expected BackendUnavailable, got {other:?}"),
        }
    }
    set_device_env(None);
}
