//! qlora-train
