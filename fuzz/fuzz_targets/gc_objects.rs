//! GC protocol objects: round plans, open-session lists, sweep records,
//! session markers. Whatever decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_core::gc::{GcPlan, OpenSessions, PackList};
use tessera_core::session::SessionMarker;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = GcPlan::decode(data, "fuzz") {
        assert_eq!(p.encode(), data);
    }
    if let Ok(o) = OpenSessions::decode(data, "fuzz") {
        assert_eq!(o.encode(), data);
    }
    if let Ok(l) = PackList::decode(data, "fuzz") {
        assert_eq!(l.encode(), data);
    }
    if let Ok(m) = SessionMarker::decode(data, "fuzz") {
        let again = SessionMarker::decode(&m.encode(), "fuzz").expect("re-decodes");
        assert_eq!(again, m);
    }
});
