//! The conformance suite on the memory driver.

orcs_tests::conformance_tests!(async { Some(orcs_memory::MemoryDriver::new()) });
