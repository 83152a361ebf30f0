//! qlora-gpu
