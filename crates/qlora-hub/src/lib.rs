//! qlora-hub
