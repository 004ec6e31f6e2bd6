//! Device discovery opens the Vulkan backend at most once per question (it opened it up to
//! three times: for the feature lines, for `usable` and for `software`). Counted with
//! `VulkanContext::open_attempts`; one test in its own process, so that no other test opens a
//! device meanwhile.

#[cfg(feature = "vulkan")]
#[test]
fn probe_all_and_best_available_open_vulkan_at_most_once() {
    use tessera::vulkan::VulkanContext;
    if tessera::forced_backend().ok().flatten().is_some() {
        println!("skipped: TESSERA_BACKEND is set (best_available opens only that backend)");
        return;
    }
    let before = VulkanContext::open_attempts();
    let statuses = tessera::probe_all();
    let opened = VulkanContext::open_attempts() - before;
    let vulkan = statuses
        .iter()
        .find(|s| s.kind == tessera::BackendKind::Vulkan)
        .unwrap();
    println!(
        "probe_all opened Vulkan {opened} time(s); usable: {:?}",
        vulkan.usable
    );
    assert!(
        opened <= 1,
        "probe_all opened the Vulkan backend {opened} times"
    );

    let before = VulkanContext::open_attempts();
    let best = tessera::best_available().unwrap();
    let opened = VulkanContext::open_attempts() - before;
    println!(
        "best_available: {} (opened Vulkan {opened} time(s))",
        best.kind()
    );
    assert!(
        opened <= 1,
        "best_available opened the Vulkan backend {opened} times"
    );
    if vulkan.usable.is_ok() && vulkan.software {
        assert_ne!(
            best.kind(),
            tessera::BackendKind::Vulkan,
            "a software device was chosen"
        );
    }
}
