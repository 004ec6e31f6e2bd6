//! Backend selection through `TESSERA_BACKEND`. One test, because it changes the process
//! environment.

use tessera::{BackendKind, Error};

#[test]
fn forced_backend_is_honoured_or_fails_clearly() {
    // SAFETY (std's requirement for set_var): this test binary has a single test, so no other
    // thread reads the environment concurrently.
    unsafe { std::env::set_var(tessera::BACKEND_ENV, "cpu") };
    assert_eq!(tessera::best_available().unwrap().kind(), BackendKind::Cpu);

    unsafe { std::env::set_var(tessera::BACKEND_ENV, "tpu") };
    match tessera::best_available() {
        Err(Error::InvalidArgument { arg, got, .. }) => {
            assert_eq!(arg, tessera::BACKEND_ENV);
            assert!(got.contains("tpu"));
        }
        other => panic!(
            "expected an invalid-argument error, got {:?}",
            other.map(|b| b.kind())
        ),
    }

    // A forced backend that is missing is an error, never a silent fallback to the CPU.
    for kind in [BackendKind::Cuda, BackendKind::Vulkan] {
        unsafe { std::env::set_var(tessera::BACKEND_ENV, kind.name()) };
        match tessera::best_available() {
            Ok(b) => assert_eq!(b.kind(), kind, "forced {kind} but got another backend"),
            Err(Error::BackendUnavailable { backend, reason }) => {
                assert_eq!(backend, kind);
                assert!(!reason.is_empty());
                println!("skipped: {kind} not available here ({reason}); checked that forcing it fails clearly");
            }
            Err(e) => panic!("unexpected error for {kind}: {e}"),
        }
    }

    unsafe { std::env::remove_var(tessera::BACKEND_ENV) };
    let b = tessera::best_available().unwrap();
    let probes = tessera::probe_all();
    let first_usable = probes
        .iter()
        .find(|p| p.usable.is_ok() && !p.software)
        .unwrap()
        .kind;
    assert_eq!(
        b.kind(),
        first_usable,
        "best available must be the first usable hardware backend in cuda, vulkan, cpu order"
    );
}
