//! A sample to token ids and a target mask. Loss on assistant tokens only is computed the way
//! TRL's `assistant_only_loss` does without template markers: render the conversation
//! incrementally and take, for each assistant message, the text between the prompt that opens
//! its turn (`render(msgs[..i], add_generation_prompt)`) and the render that includes it
//! (`render(msgs[..=i])`); that span (the reply and its end-of-turn token) is trained, the
//! rest masked. The full text is tokenized once and tokens are assigned to spans by their byte
//! offsets, so the ids are exactly what the model sees at inference.

use super::shape::{Message, Sample};
use super::template::{ChatRenderer, TextEncoder};
use crate::config::LossOn;

/// A tokenized sample: `targets[t]` says whether token `t` is predicted with loss.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub targets: Vec<bool>,
    /// Length before truncation.
    pub full_len: usize,
}

impl Tokenized {
    pub fn truncated(&self) -> bool {
        self.ids.len() < self.full_len
    }
    /// Tokens that carry loss (the first token never does: nothing predicts it).
    pub fn trained_tokens(&self) -> usize {
        self.targets.iter().skip(1).filter(|t| **t).count()
    }
}

/// Renders and tokenizes one sample (no truncation yet). Errors are messages for the caller
/// to attach to the record's source.
pub fn tokenize(sample: &Sample, renderer: &dyn ChatRenderer, enc: &dyn TextEncoder, loss_on: LossOn) -> Result<Tokenized, String> {
    match sample {
        Sample::Text(text) => {
            let mut e = enc.encode(text, true)?;
            if let Some(eos) = enc.eos_id()
                && e.ids.last() != Some(&eos)
            {
                e.ids.push(eos);
            }
            let n = e.ids.len();
            Ok(Tokenized { targets: vec![true; n], ids: e.ids, full_len: n })
        }
        Sample::Chat(msgs) => tokenize_chat(msgs, renderer, enc, loss_on),
    }
}

fn tokenize_chat(msgs: &[Message], renderer: &dyn ChatRenderer, enc: &dyn TextEncoder, loss_on: LossOn) -> Result<Tokenized, String> {
    let full = renderer.render(msgs, false).map_err(|e| format!("chat template failed: {e}"))?;
    // The template writes BOS itself where the model wants one (as transformers does with
    // `apply_chat_template(tokenize=True)`), so the tokenizer adds nothing.
    let e = enc.encode(&full, false)?;
    let n = e.ids.len();
    let targets = match loss_on {
        LossOn::All => vec![true; n],
        LossOn::Assistant => {
            let spans = assistant_spans(msgs, renderer, &full)?;
            e.offsets.iter().map(|&(s, end)| end > s && spans.iter().any(|&(a, b)| s >= a && s < b)).collect()
        }
    };
    Ok(Tokenized { ids: e.ids, targets, full_len: n })
}

/// Byte spans of `full` that belong to assistant replies.
pub fn assistant_spans(msgs: &[Message], renderer: &dyn ChatRenderer, full: &str) -> Result<Vec<(usize, usize)>, String> {
    let mut spans = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = renderer.render(&msgs[..i], true).map_err(|e| format!("chat template failed: {e}"))?;
        let upto = renderer.render(&msgs[..=i], false).map_err(|e| format!("chat template failed: {e}"))?;
        if !full.starts_with(&before) || !upto.starts_with(&before) || !full.starts_with(&upto) {
            return Err(format!(
                "the chat template renders message {i} differently depending on what follows, so \
                 the assistant's tokens cannot be found; set data.loss_on: all"
            ));
        }
        spans.push((before.len(), upto.len()));
    }
    Ok(spans)
}

/// Cuts a sample to `max_len` tokens.
pub fn truncate(t: &mut Tokenized, max_len: usize) {
    t.ids.truncate(max_len);
    t.targets.truncate(max_len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::template::{ChatMl, testing::ByteTok};

    fn chat() -> Sample {
        Sample::Chat(vec![
            Message::new("system", "S"),
            Message::new("user", "Q"),
            Message::new("assistant", "AB"),
            Message::new("user", "Q2"),
            Message::new("assistant", "C"),
        ])
    }

    fn trained_text(t: &Tokenized) -> String {
        let ids: Vec<u32> = t.ids.iter().zip(&t.targets).filter(|(_, m)| **m).map(|(i, _)| *i).collect();
        ByteTok.decode(&ids).unwrap()
    }

    #[test]
    fn only_assistant_replies_and_their_end_token_are_trained() {
        let t = tokenize(&chat(), &ChatMl, &ByteTok, LossOn::Assistant).unwrap();
        assert_eq!(trained_text(&t), "AB<|im_end|>\nC<|im_end|>\n");
        assert_eq!(t.trained_tokens(), 7);
        assert_eq!(ByteTok.decode(&t.ids).unwrap(), ChatMl.render(&chat_msgs(), false).unwrap());
    }

    fn chat_msgs() -> Vec<Message> {
        match chat() {
            Sample::Chat(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn loss_on_all_trains_everything() {
        let t = tokenize(&chat(), &ChatMl, &ByteTok, LossOn::All).unwrap();
        assert!(t.targets.iter().all(|m| *m));
    }

    #[test]
    fn raw_text_gets_eos_and_is_all_trained() {
        let t = tokenize(&Sample::Text("hey".into()), &ChatMl, &ByteTok, LossOn::Assistant).unwrap();
        assert_eq!(t.ids, vec![b'h' as u32, b'e' as u32, b'y' as u32, 258]);
        assert_eq!(t.trained_tokens(), 3);
    }

    struct Unstable;
    impl ChatRenderer for Unstable {
        fn render(&self, m: &[Message], g: bool) -> Result<String, String> {
            // Renders the last message differently from earlier ones.
            Ok(format!("{}{}", m.len(), if g { "!" } else { "" }))
        }
    }

    #[test]
    fn a_template_that_is_not_prefix_stable_is_an_error() {
        let e = tokenize(&chat(), &Unstable, &ByteTok, LossOn::Assistant).unwrap_err();
        assert!(e.contains("loss_on: all"), "{e}");
    }

    #[test]
    fn truncation_keeps_full_length() {
        let mut t = tokenize(&chat(), &ChatMl, &ByteTok, LossOn::Assistant).unwrap();
        let n = t.ids.len();
        truncate(&mut t, 10);
        assert!(t.truncated());
        assert_eq!((t.ids.len(), t.targets.len(), t.full_len), (10, 10, n));
    }
}
