//! The fault plan parser (`TESSERA_FAULTS`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_core::FaultPlan;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(plan) = text.parse::<FaultPlan>()
    {
        assert!((0.0..=1.0).contains(&plan.transient) && (0.0..=1.0).contains(&plan.torn));
    }
});
