//! Chat prompts rendered from the model's own Jinja template, the way transformers'
//! `apply_chat_template` does it: a real Jinja engine (minijinja, with Python string methods
//! such as `.strip()` from minijinja-contrib's pycompat), `trim_blocks` and `lstrip_blocks`
//! on, `raise_exception`, `strftime_now`, and `bos_token`/`eos_token` in the context. The
//! template comes from `tokenizer_config.json` (`chat_template`, a string or a list of named
//! templates) or `chat_template.jinja` (as transformers 5 writes it).
//!
//! ```
//! use qlora_engine::chat_template::{ChatMessage, ChatTemplate};
//! let t = ChatTemplate::new(
//!     "{% for m in messages %}<{{ m.role }}>{{ m.content.strip() }}\n{% endfor %}\
//!      {% if add_generation_prompt %}<assistant>{% endif %}".into(), None, None);
//! let out = t.render(&[ChatMessage::user(" hi ")], true).unwrap();
//! assert_eq!(out, "<user>hi\n<assistant>");
//! ```

use crate::error::{Error, Result};
use crate::tokenizer::{Tokenizer, read_json_opt};
use std::path::Path;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into() }
    }
    pub fn system(content: &str) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: &str) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: &str) -> Self {
        Self::new("assistant", content)
    }
}

/// A model's chat template with the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    extra: Vec<(String, String)>,
}

impl ChatTemplate {
    pub fn new(source: String, bos_token: Option<String>, eos_token: Option<String>) -> Self {
        Self { source, bos_token, eos_token, extra: vec![] }
    }

    /// The folder's template, or `None` when the model has none (a base model).
    pub fn from_dir(dir: &Path, tokenizer: &Tokenizer) -> Result<Option<Self>> {
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?)
        } else {
            let tc = read_json_opt(&dir.join("tokenizer_config.json"))?;
            match tc.as_ref().and_then(|c| c.get("chat_template")) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string),
                _ => None,
            }
        };
        Ok(source.map(|s| Self {
            source: s,
            bos_token: tokenizer.bos_token().map(str::to_string),
            eos_token: tokenizer.eos_token().map(str::to_string),
            extra: tokenizer.extra_special_tokens().to_vec(),
        }))
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; `add_generation_prompt` appends the assistant turn's opening.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String { strftime_now(&fmt) });
        env.add_template("chat", &self.source).map_err(|e| Error::ChatTemplate(format!("the model's chat template does not parse: {e}")))?;
        let tmpl = env.get_template("chat").map_err(|e| Error::ChatTemplate(e.to_string()))?;
        let mut ctx = std::collections::BTreeMap::new();
        ctx.insert("messages".to_string(), minijinja::Value::from_serialize(messages));
        ctx.insert("add_generation_prompt".to_string(), minijinja::Value::from(add_generation_prompt));
        ctx.insert("bos_token".to_string(), minijinja::Value::from(self.bos_token.clone().unwrap_or_default()));
        ctx.insert("eos_token".to_string(), minijinja::Value::from(self.eos_token.clone().unwrap_or_default()));
        for (k, v) in &self.extra {
            ctx.insert(k.clone(), minijinja::Value::from(v.clone()));
        }
        tmpl.render(ctx).map_err(|e| Error::ChatTemplate(format!("rendering failed: {e}")))
    }
}

/// `strftime_now` for templates that print today's date (Llama 3.x); UTC, common specifiers.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86_400);
    // civil-from-days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    let month = MONTHS[(m - 1) as usize];
    fmt.replace("%d", &format!("{d:02}"))
        .replace("%m", &format!("{m:02}"))
        .replace("%Y", &y.to_string())
        .replace("%B", month)
        .replace("%b", &month[..3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('only user and assistant roles') }}".into(), None, None);
        let e = t.render(&[], false).unwrap_err().to_string();
        assert!(e.contains("only user and assistant roles"), "{e}");
    }

    #[test]
    fn bos_and_system_prompt_are_rendered() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}[S]{{ m['content'] }}{% else %}[{{ m.role|upper }}]{{ m.content }}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src.into(), Some("<s>".into()), Some("</s>".into()));
        let out = t.render(&[ChatMessage::system("be brief"), ChatMessage::user("hi")], false).unwrap();
        assert_eq!(out, "<s>[S]be brief[USER]hi");
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        let src = "{% for m in messages %}\n    {{ m.content }}\n{% endfor %}";
        let t = ChatTemplate::new(src.into(), None, None);
        assert_eq!(t.render(&[ChatMessage::user("a"), ChatMessage::user("b")], false).unwrap(), "    a\n    b\n");
    }

    #[test]
    fn date_is_plausible() {
        let s = strftime_now("%d %B %Y");
        assert!(s.len() >= 10 && s.ends_with(|c: char| c.is_ascii_digit()), "{s}");
    }
}
