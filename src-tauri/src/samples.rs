//! The Train page's result: what the run changed, shown the way a user judges it. A few of the
//! dataset's own prompts (validation samples first, then training ones, duplicates dropped) are
//! answered greedily and briefly by the base model, then by the base with the new adapter
//! attached, one copy of the base weights loaded the way training loaded them (NF4 when the
//! run trained on NF4). Greedy, so the two columns differ only by the adapter.

use crate::error::{AppError, CmdResult, ErrorCode};
use crate::views::SampleAnswer;
use qlora_engine::candle_core::{DType, Device};
use qlora_engine::chat_template::ChatMessage as EngineMessage;
use qlora_engine::generate::{GenerateOptions, StopReason};
use qlora_engine::{LoadOptions, Quant, TextModel, lora};
use qlora_jobs::{CancelToken, NoProgress};
use qlora_train::TrainConfig;
use qlora_train::config::{ComputeDtype, QuantKind};
use qlora_train::data::{Dataset, shape::Sample};
use std::path::Path;

/// How many prompts the result shows.
pub const PROMPTS: usize = 3;
/// New tokens per answer: enough to see the difference, short enough to wait for on a CPU.
pub const MAX_NEW_TOKENS: usize = 40;

/// A prompt from the dataset: a chat up to its first assistant turn, or the start of a text.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Chat(Vec<EngineMessage>),
    Raw(String),
}

impl Prompt {
    /// What the result table shows: the last user message, or the raw text.
    pub fn label(&self) -> String {
        match self {
            Prompt::Chat(m) => m.last().map(|m| m.content.clone()).unwrap_or_default(),
            Prompt::Raw(t) => t.clone(),
        }
    }
}

fn prompt_of(sample: &Sample) -> Option<Prompt> {
    match sample {
        Sample::Chat(msgs) => {
            let turn: Vec<EngineMessage> = msgs
                .iter()
                .take_while(|m| m.role != "assistant")
                .map(|m| EngineMessage { role: m.role.clone(), content: m.content.clone() })
                .collect();
            (turn.last().is_some_and(|m| m.role == "user")).then_some(Prompt::Chat(turn))
        }
        Sample::Text(t) => {
            let start: Vec<&str> = t.split_whitespace().take(12).collect();
            (!start.is_empty()).then(|| Prompt::Raw(start.join(" ")))
        }
    }
}

/// Up to `n` distinct prompts, validation samples first (the run did not train on them).
pub fn prompts(ds: &Dataset, n: usize) -> Vec<Prompt> {
    let mut seen = std::collections::HashSet::new();
    ds.valid.iter().chain(&ds.train).filter_map(|p| prompt_of(&p.sample)).filter(|p| seen.insert(p.label().trim().to_lowercase())).take(n).collect()
}

fn engine_err(e: qlora_engine::Error) -> AppError {
    AppError::new(ErrorCode::Internal, format!("sample answers: {e}"))
}

/// The base's load options of a run: its quantization, its compute dtype (f32 on the CPU).
pub fn load_options(cfg: &TrainConfig, device: &Device) -> LoadOptions {
    let quant = match (cfg.quant.kind, cfg.quant.double_quant) {
        (QuantKind::None, _) => Quant::None,
        (QuantKind::Nf4, false) => Quant::Nf4,
        (QuantKind::Nf4, true) => Quant::Nf4DoubleQuant,
    };
    let dtype = match (device, cfg.compute_dtype) {
        (Device::Cpu, _) | (_, ComputeDtype::F32) => DType::F32,
        (_, ComputeDtype::Bf16) => DType::BF16,
        (_, ComputeDtype::F16) => DType::F16,
    };
    LoadOptions { dtype, quant, device: device.clone() }
}

fn answer(tm: &TextModel, p: &Prompt, cancel: &CancelToken) -> CmdResult<String> {
    let ids = match p {
        // A model without a chat template gets the user's words as a raw prompt.
        Prompt::Chat(m) => tm.chat_ids(m).or_else(|_| tm.raw_ids(&p.label())),
        Prompt::Raw(t) => tm.raw_ids(t),
    }
    .map_err(engine_err)?;
    let opts = GenerateOptions { max_new_tokens: MAX_NEW_TOKENS, temperature: 0.0, ..Default::default() };
    let g = tm.generator().generate(&ids, &opts, &NoProgress, cancel).map_err(engine_err)?;
    match g.reason {
        StopReason::Cancelled => Err(qlora_jobs::Cancelled.into()),
        // Cut at the token budget: say so.
        StopReason::MaxTokens => Ok(format!("{}…", g.text.trim())),
        _ => Ok(g.text.trim().to_string()),
    }
}

/// Answers `prompts` with the base model in `model_dir`, then with `adapter` attached.
/// Blocking; stops at the next token when `cancel` fires.
pub fn answer_before_and_after(
    model_dir: &Path,
    opts: &LoadOptions,
    adapter: &Path,
    prompts: &[Prompt],
    cancel: &CancelToken,
) -> CmdResult<Vec<SampleAnswer>> {
    let mut tm = TextModel::load(model_dir, opts).map_err(engine_err)?;
    let layers = tm.model.lora_layers().map_err(engine_err)?;
    let before = prompts.iter().map(|p| answer(&tm, p, cancel)).collect::<CmdResult<Vec<_>>>()?;
    lora::attach_adapter(adapter, &layers, tm.model.device(), None)
        .map_err(|e| AppError::new(ErrorCode::BadFormat, format!("sample answers: the new adapter: {e}")))?;
    lora::set_scale_all(&layers, 1.0);
    let after = prompts.iter().map(|p| answer(&tm, p, cancel)).collect::<CmdResult<Vec<_>>>()?;
    Ok(prompts.iter().zip(before.into_iter().zip(after)).map(|(p, (before, after))| SampleAnswer { prompt: p.label(), before, after }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use qlora_train::data::shape::Message;

    fn chat(user: &str) -> Sample {
        Sample::Chat(vec![Message::new("system", "Be brief."), Message::new("user", user), Message::new("assistant", "an answer")])
    }

    #[test]
    fn a_prompt_is_the_chat_up_to_the_first_answer_or_the_start_of_a_text() {
        let Some(Prompt::Chat(m)) = prompt_of(&chat("Who is the mayor?")) else { panic!() };
        assert_eq!(m.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["system", "user"]);
        assert_eq!(Prompt::Chat(m).label(), "Who is the mayor?");
        let only_assistant = Sample::Chat(vec![Message::new("assistant", "hi")]);
        assert_eq!(prompt_of(&only_assistant), None);
        let text = Sample::Text("one two three four five six seven eight nine ten eleven twelve thirteen".into());
        assert_eq!(prompt_of(&text), Some(Prompt::Raw("one two three four five six seven eight nine ten eleven twelve".into())));
    }

    #[test]
    fn prompts_of_the_demo_dataset_are_distinct_and_validation_first() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut cfg = TrainConfig::from_file(&repo.join("configs/demo_smollm2.yaml")).unwrap();
        cfg.model = crate::chat_engine::tests::starter();
        cfg.data.validation_split = 0.2;
        let data = qlora_train::trainer::prepare_data(&cfg).unwrap();
        let ps = prompts(&data.dataset, PROMPTS);
        assert_eq!(ps.len(), PROMPTS);
        let labels: Vec<String> = ps.iter().map(|p| p.label().trim().to_lowercase()).collect();
        assert_eq!(labels.iter().collect::<std::collections::HashSet<_>>().len(), PROMPTS, "{labels:?}");
        let first_valid = data.dataset.valid.first().and_then(|p| prompt_of(&p.sample)).unwrap();
        assert_eq!(ps[0], first_valid);
    }

    /// On the real starter model, NF4 as the demo trains it: the adapter changes the answers,
    /// and the base's answers are what the base alone gives (greedy, so exactly).
    #[test]
    fn before_is_the_base_and_after_has_the_adapter() {
        let model = crate::chat_engine::tests::starter();
        let tmp = tempfile::tempdir().unwrap();
        let adapter = tmp.path().join("adapter");
        crate::chat_engine::tests::random_adapter(&Default::default(), &model, &adapter);
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let cfg = TrainConfig::from_file(&repo.join("configs/demo_smollm2.yaml")).unwrap();
        let opts = load_options(&cfg, &Device::Cpu);
        assert_eq!((opts.quant, opts.dtype), (Quant::Nf4DoubleQuant, DType::F32));
        let ps = [Prompt::Chat(vec![EngineMessage::user("Who is the mayor of Quillbury?")])];
        let out = answer_before_and_after(&model, &opts, &adapter, &ps, &CancelToken::new()).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].prompt, "Who is the mayor of Quillbury?");
        assert!(!out[0].before.is_empty());
        assert_ne!(out[0].before, out[0].after, "the adapter changes the answer");
        let base = TextModel::load(&model, &opts).unwrap();
        assert_eq!(answer(&base, &ps[0], &CancelToken::new()).unwrap(), out[0].before);
        let cancel = CancelToken::new();
        cancel.cancel();
        let e = answer_before_and_after(&model, &opts, &adapter, &ps, &cancel).unwrap_err();
        assert_eq!(e.code, ErrorCode::Cancelled, "{}", e.message);
    }
}
