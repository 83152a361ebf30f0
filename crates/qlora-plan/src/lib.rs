//! qlora-plan
