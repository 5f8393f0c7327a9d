//! End-to-end tests of the library through the `tessera` facade.

mod api;
mod conformance;
mod docs;
mod golden;
