//! The shapes a fine-tuning record comes in, turned into one form: a conversation of
//! role/content messages, or raw text. Alpaca (`instruction`/`input`/`output`, optional
//! `system`), ShareGPT (`conversations` of `from`/`value`), OpenAI messages (`messages` of
//! `role`/`content`) and raw text (`text`). `auto` picks the shape from the first record's keys
//! and then holds every record to it, so a stray record of another shape is an error.

use super::DataError;
use super::read::{Record, Source};
use crate::config::DataFormat;
use serde_json::Value;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A record in our one form.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    Chat(Vec<Message>),
    Text(String),
}

/// The concrete shape (auto resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Alpaca,
    Sharegpt,
    Messages,
    Text,
}

impl Shape {
    pub fn from_format(f: DataFormat) -> Option<Shape> {
        match f {
            DataFormat::Auto => None,
            DataFormat::Alpaca => Some(Shape::Alpaca),
            DataFormat::Sharegpt => Some(Shape::Sharegpt),
            DataFormat::Messages => Some(Shape::Messages),
            DataFormat::Text => Some(Shape::Text),
        }
    }

    /// Guesses the shape from a record's keys.
    pub fn detect(record: &Record) -> Result<Shape, DataError> {
        let obj = record.value.as_object();
        let has = |k: &str| obj.is_some_and(|o| o.contains_key(k));
        if has("messages") {
            Ok(Shape::Messages)
        } else if has("conversations") {
            Ok(Shape::Sharegpt)
        } else if has("instruction") && has("output") {
            Ok(Shape::Alpaca)
        } else if has("text") {
            Ok(Shape::Text)
        } else {
            let keys: Vec<&str> = obj.map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
            Err(DataError::BadRecord {
                at: record.source.clone(),
                message: format!(
                    "cannot tell the dataset's format from keys {keys:?}: expected `messages` (OpenAI), \
                     `conversations` (ShareGPT), `instruction`+`output` (alpaca) or `text`; \
                     or set data.format"
                ),
            })
        }
    }
}

/// Converts a record of the given shape.
pub fn to_sample(record: &Record, shape: Shape, system_prompt: Option<&str>) -> Result<Sample, DataError> {
    let bad = |message: String| DataError::BadRecord { at: record.source.clone(), message };
    let obj = record.value.as_object().ok_or_else(|| bad("a record must be a JSON object".into()))?;
    let sample = match shape {
        Shape::Text => Sample::Text(string_field(obj, "text", &record.source)?.to_string()),
        Shape::Alpaca => {
            let instruction = string_field(obj, "instruction", &record.source)?;
            let output = string_field(obj, "output", &record.source)?;
            let input = obj.get("input").and_then(Value::as_str).unwrap_or("");
            let user = if input.is_empty() { instruction.to_string() } else { format!("{instruction}\n\n{input}") };
            let mut msgs = Vec::new();
            if let Some(s) = obj.get("system").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                msgs.push(Message::new("system", s));
            }
            msgs.push(Message::new("user", &user));
            msgs.push(Message::new("assistant", output));
            Sample::Chat(msgs)
        }
        Shape::Messages => Sample::Chat(message_list(obj, "messages", "role", "content", &record.source)?),
        Shape::Sharegpt => Sample::Chat(message_list(obj, "conversations", "from", "value", &record.source)?),
    };
    Ok(match sample {
        Sample::Chat(mut msgs) => {
            if let Some(sp) = system_prompt
                && msgs.first().is_none_or(|m| m.role != "system")
            {
                msgs.insert(0, Message::new("system", sp));
            }
            check_chat(&msgs).map_err(bad)?;
            Sample::Chat(msgs)
        }
        text => text,
    })
}

fn string_field<'a>(obj: &'a serde_json::Map<String, Value>, key: &str, src: &Source) -> Result<&'a str, DataError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(DataError::BadRecord { at: src.clone(), message: format!("`{key}` must be a string, found {}", kind(other)) }),
        None => Err(DataError::BadRecord { at: src.clone(), message: format!("missing `{key}`") }),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn message_list(obj: &serde_json::Map<String, Value>, key: &str, role_key: &str, content_key: &str, src: &Source) -> Result<Vec<Message>, DataError> {
    let bad = |message: String| DataError::BadRecord { at: src.clone(), message };
    let list = match obj.get(key) {
        Some(Value::Array(a)) => a,
        Some(other) => return Err(bad(format!("`{key}` must be an array of messages, found {}", kind(other)))),
        None => return Err(bad(format!("missing `{key}`"))),
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get(role_key).and_then(Value::as_str);
            let content = m.get(content_key).and_then(Value::as_str);
            match (role, content) {
                (Some(r), Some(c)) => Ok(Message::new(normalize_role(r), c)),
                _ => Err(bad(format!("`{key}[{i}]` needs string fields `{role_key}` and `{content_key}`"))),
            }
        })
        .collect()
}

/// ShareGPT's `human`/`gpt` to the chat roles templates know.
fn normalize_role(r: &str) -> &str {
    match r {
        "human" | "user" => "user",
        "gpt" | "assistant" | "model" | "chatgpt" | "bard" => "assistant",
        "system" => "system",
        other => other,
    }
}

/// A trainable conversation has known roles and at least one assistant turn.
fn check_chat(msgs: &[Message]) -> Result<(), String> {
    if let Some(m) = msgs.iter().find(|m| !["system", "user", "assistant", "tool"].contains(&m.role.as_str())) {
        return Err(format!("unknown role `{}`: expected system, user, assistant (or human/gpt)", m.role));
    }
    if !msgs.iter().any(|m| m.role == "assistant") {
        return Err("the conversation has no assistant message to learn from".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: Value) -> Record {
        Record { source: Source { file: "f.jsonl".into(), line: Some(4), index: 3 }, value: v }
    }

    #[test]
    fn detects_each_shape() {
        assert_eq!(Shape::detect(&rec(json!({"messages": []}))).unwrap(), Shape::Messages);
        assert_eq!(Shape::detect(&rec(json!({"conversations": []}))).unwrap(), Shape::Sharegpt);
        assert_eq!(Shape::detect(&rec(json!({"instruction": "a", "output": "b"}))).unwrap(), Shape::Alpaca);
        assert_eq!(Shape::detect(&rec(json!({"text": "a"}))).unwrap(), Shape::Text);
        let e = Shape::detect(&rec(json!({"prompt": "a"}))).unwrap_err().to_string();
        assert!(e.contains("f.jsonl:4") && e.contains("prompt"), "{e}");
    }

    #[test]
    fn alpaca_joins_instruction_and_input() {
        let s = to_sample(&rec(json!({"instruction": "Do", "input": "x", "output": "y"})), Shape::Alpaca, None).unwrap();
        assert_eq!(s, Sample::Chat(vec![Message::new("user", "Do\n\nx"), Message::new("assistant", "y")]));
    }

    #[test]
    fn sharegpt_roles_are_normalized_and_system_prompt_added() {
        let v = json!({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]});
        let s = to_sample(&rec(v), Shape::Sharegpt, Some("be nice")).unwrap();
        let Sample::Chat(m) = s else { panic!() };
        assert_eq!(m[0], Message::new("system", "be nice"));
        assert_eq!(m[2], Message::new("assistant", "yo"));
    }

    #[test]
    fn wrong_shape_names_the_line_and_field() {
        let e = to_sample(&rec(json!({"messages": "hi"})), Shape::Messages, None).unwrap_err().to_string();
        assert!(e.contains("f.jsonl:4") && e.contains("`messages` must be an array"), "{e}");
        let e = to_sample(&rec(json!({"instruction": 3, "output": "x"})), Shape::Alpaca, None).unwrap_err();
        assert!(e.to_string().contains("`instruction` must be a string, found a number"), "{e}");
        let v = json!({"messages": [{"role": "user", "content": "x"}]});
        let e = to_sample(&rec(v), Shape::Messages, None).unwrap_err().to_string();
        assert!(e.contains("no assistant message"), "{e}");
        let e = to_sample(&rec(json!({"messages": [{"role": "user"}]})), Shape::Messages, None).unwrap_err();
        assert!(e.to_string().contains("`messages[0]` needs string fields"), "{e}");
    }
}
