//! Integration tests of the VM adapter against real QEMU tools.
