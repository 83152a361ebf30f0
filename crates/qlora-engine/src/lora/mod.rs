//! LoRA as a decorator around any [`crate::linear::Linear`]: PEFT adapters loaded, scaled,
//! switched, dropped and merged at inference, and trainable adapters for QLoRA.
