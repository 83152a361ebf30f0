//! What the data pipeline needs from a model's tokenizer and chat template, as two small
//! traits, so the masking logic is tested on its own and runs with the engine's Jinja renderer
//! in production. Also the named fallback templates for models that ship none (`chatml`),
//! written out in Rust: they are fixed strings, so a Jinja engine adds nothing.

use super::shape::Message;

/// Names accepted by `data.fallback_template`.
pub const FALLBACK_NAMES: &[&str] = &["chatml"];

/// Renders a conversation to the model's prompt text.
pub trait ChatRenderer {
    /// `add_generation_prompt` appends the header that opens an assistant turn, as
    /// transformers' `apply_chat_template` does.
    fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, String>;
}

/// Token ids of a text with each token's byte span in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Byte range of each token in the text; special tokens added by the tokenizer's
    /// post-processor (BOS) have an empty range.
    pub offsets: Vec<(usize, usize)>,
}

/// Encodes text to ids.
pub trait TextEncoder {
    /// `add_special_tokens` adds what the tokenizer's post-processor adds (BOS for Llama);
    /// special tokens written in the text (`<|im_start|>`) are always recognised.
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoded, String>;
    /// The end-of-sequence id appended to raw text samples.
    fn eos_id(&self) -> Option<u32>;
    /// The id used to pad rows of a batch (never trained on).
    fn pad_id(&self) -> u32;
    /// Text of ids, for showing an example in preflight.
    fn decode(&self, ids: &[u32]) -> Result<String, String>;
}

/// A fallback template by name.
pub fn fallback(name: &str) -> Option<Box<dyn ChatRenderer + Send + Sync>> {
    match name {
        "chatml" => Some(Box::new(ChatMl)),
        _ => None,
    }
}

/// ChatML, as used by Qwen, SmolLM and many fine-tunes:
/// `<|im_start|>{role}\n{content}<|im_end|>\n` per message.
#[derive(Debug, Clone, Copy)]
pub struct ChatMl;

impl ChatRenderer for ChatMl {
    fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, String> {
        let mut s = String::new();
        for m in messages {
            s.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
        }
        if add_generation_prompt {
            s.push_str("<|im_start|>assistant\n");
        }
        Ok(s)
    }
}

/// A [`TextEncoder`] over a Hugging Face `tokenizer.json`.
pub struct HfTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
    pub eos: Option<u32>,
    pub pad: u32,
}

impl TextEncoder for HfTokenizer {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoded, String> {
        let enc = self.tokenizer.encode(text, add_special_tokens).map_err(|e| e.to_string())?;
        Ok(Encoded { ids: enc.get_ids().to_vec(), offsets: enc.get_offsets().to_vec() })
    }
    fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    fn pad_id(&self) -> u32 {
        self.pad
    }
    fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.tokenizer.decode(ids, false).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A byte-level tokenizer for tests: every byte is a token, except `<|im_start|>` and
    //! `<|im_end|>` which are one token each (ids 256, 257); 258 is EOS.
    use super::*;

    pub struct ByteTok;

    const SPECIAL: [(&str, u32); 2] = [("<|im_start|>", 256), ("<|im_end|>", 257)];

    impl TextEncoder for ByteTok {
        fn encode(&self, text: &str, _add: bool) -> Result<Encoded, String> {
            let mut out = Encoded::default();
            let b = text.as_bytes();
            let mut i = 0;
            'outer: while i < b.len() {
                for (s, id) in SPECIAL {
                    if text[i..].starts_with(s) {
                        out.ids.push(id);
                        out.offsets.push((i, i + s.len()));
                        i += s.len();
                        continue 'outer;
                    }
                }
                out.ids.push(b[i] as u32);
                out.offsets.push((i, i + 1));
                i += 1;
            }
            Ok(out)
        }
        fn eos_id(&self) -> Option<u32> {
            Some(258)
        }
        fn pad_id(&self) -> u32 {
            0
        }
        fn decode(&self, ids: &[u32]) -> Result<String, String> {
            let mut s = Vec::new();
            for &id in ids {
                match id {
                    256 => s.extend_from_slice(b"<|im_start|>"),
                    257 => s.extend_from_slice(b"<|im_end|>"),
                    258 => s.extend_from_slice(b"</s>"),
                    b => s.push(b as u8),
                }
            }
            String::from_utf8(s).map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_like_transformers() {
        let m = [Message::new("user", "hi"), Message::new("assistant", "yo")];
        let s = ChatMl.render(&m, false).unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n");
        let g = ChatMl.render(&m[..1], true).unwrap();
        assert_eq!(g, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        assert!(fallback("chatml").is_some() && fallback("nope").is_none());
    }
}
