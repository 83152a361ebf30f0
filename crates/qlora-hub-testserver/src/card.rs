//! What the Hub says about a model beyond its files, as the real Hub derives it: `cardData` is
//! the YAML front matter of the repository's `README.md` (the model card), `pipeline_tag` comes
//! from the card or, for a `*ForCausalLM` config, is `text-generation`, and `tags` gathers the
//! library, the weight format, the architecture, the task, the card's own tags and languages,
//! and `license:<id>`. Download and like counts, which only the Hub's history knows, are read
//! from the repository's `.hub/config.json` (`{"downloads": 1234, "likes": 56}`; 0 if absent)
//! so a test can check that clients sort and show them.
//!
//! It also answers `GET /api/models` (search) in the Hub's shapes: the short form by default,
//! `full=true` adding `lastModified`, `gated`, `sha`, `author`, `siblings`, and `cardData=true`
//! adding the card.

use crate::repo::{RepoDir, Revision};
use serde_json::{Value, json};
use std::path::Path;

/// A repository's card and counters, as the Hub's model endpoints report them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelMeta {
    pub downloads: u64,
    pub likes: u64,
    /// The README's front matter as JSON, when the README has one.
    pub card_data: Option<Value>,
    pub pipeline_tag: Option<String>,
    pub tags: Vec<String>,
    pub library_name: String,
}

#[derive(serde::Deserialize, Default)]
struct Counters {
    #[serde(default)]
    downloads: u64,
    #[serde(default)]
    likes: u64,
}

/// The YAML between a leading `---` line and the next `---` line, and the text after it.
pub fn front_matter(readme: &str) -> Option<(&str, &str)> {
    let rest = readme.strip_prefix("---\n").or_else(|| readme.strip_prefix("---\r\n"))?;
    let mut at = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return Some((&rest[..at], &rest[at + line.len()..]));
        }
        at += line.len();
    }
    None
}

/// The card data of a README: its front matter parsed as YAML (a mapping), else `None`.
pub fn card_data(readme: &str) -> Option<Value> {
    let (yaml, _) = front_matter(readme)?;
    let v: Value = serde_norway::from_str(yaml).ok()?;
    v.is_object().then_some(v)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    }
}

/// Reads the card, the config and the counters of one revision.
pub fn model_meta(repo: &RepoDir, rev: &Revision) -> ModelMeta {
    let read = |name: &str| rev.files.get(name).and_then(|f| std::fs::read_to_string(&f.abs).ok());
    let card = read("README.md").and_then(|r| card_data(&r));
    let config: Value = read("config.json").and_then(|c| serde_json::from_str(&c).ok()).unwrap_or(Value::Null);
    let counters = counters(&repo.dir);
    let field = |k: &str| card.as_ref().and_then(|c| c.get(k)).and_then(Value::as_str).map(String::from);
    let causal = strings(config.get("architectures")).iter().any(|a| a.ends_with("ForCausalLM"));
    let pipeline_tag = field("pipeline_tag").or_else(|| causal.then(|| "text-generation".to_string()));
    let library_name = field("library_name").unwrap_or_else(|| "transformers".into());
    let mut tags = vec![library_name.clone()];
    if rev.files.keys().any(|p| p.ends_with(".safetensors")) {
        tags.push("safetensors".into());
    }
    tags.extend(config.get("model_type").and_then(Value::as_str).map(String::from));
    tags.extend(pipeline_tag.clone());
    let card_ref = card.as_ref();
    tags.extend(strings(card_ref.and_then(|c| c.get("tags"))));
    tags.extend(strings(card_ref.and_then(|c| c.get("language"))));
    tags.extend(field("license").map(|l| format!("license:{l}")));
    tags.push("region:us".into());
    let mut seen = std::collections::HashSet::new();
    tags.retain(|t| seen.insert(t.clone()));
    ModelMeta { downloads: counters.downloads, likes: counters.likes, card_data: card, pipeline_tag, tags, library_name }
}

fn counters(dir: &Path) -> Counters {
    std::fs::read(dir.join(".hub/config.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// What the search (`GET /api/models`) lists for one model, in the Hub's short form, plus the
/// `full=true` and `cardData=true` parts when asked.
pub fn search_entry(repo: &RepoDir, rev: &Revision, gated: &Value, private: bool, full: bool, with_card: bool) -> Value {
    let m = model_meta(repo, rev);
    let time = crate::routes::iso_time(rev.last_modified);
    let mut v = json!({
        "_id": &rev.commit[..24], "id": repo.id, "likes": m.likes, "trendingScore": 0, "private": private,
        "downloads": m.downloads, "tags": m.tags, "library_name": m.library_name, "createdAt": time,
        "modelId": repo.id,
    });
    if let Some(p) = &m.pipeline_tag {
        v["pipeline_tag"] = json!(p);
    }
    if full {
        let (org, _) = repo.id.split_once('/').unwrap_or(("", &repo.id));
        v["author"] = json!(org);
        v["sha"] = json!(rev.commit);
        v["lastModified"] = json!(time);
        v["gated"] = gated.clone();
        v["disabled"] = json!(false);
        v["siblings"] = rev.files.keys().map(|p| json!({ "rfilename": p })).collect();
    }
    if (full || with_card)
        && let Some(c) = m.card_data
    {
        v["cardData"] = c;
    }
    v
}

/// Orders search results as the Hub does for `sort=downloads|likes|lastModified|createdAt`
/// (most first); other keys keep the listing order.
pub fn sort_entries(entries: &mut [Value], sort: Option<&str>) {
    let Some(key) = sort else { return };
    // Created and modified are the same time here (a folder's newest file).
    let key = if matches!(key, "lastModified" | "last_modified") { "createdAt" } else { key };
    match key {
        "downloads" | "likes" => entries.sort_by_key(|e| std::cmp::Reverse(e[key].as_u64().unwrap_or(0))),
        "createdAt" => entries.sort_by(|a, b| b[key].as_str().cmp(&a[key].as_str())),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_is_the_yaml_between_the_dashes() {
        let r = "---\nlicense: apache-2.0\ntags: [a, b]\n---\n# Title\n\nText.\n";
        let (yaml, body) = front_matter(r).unwrap();
        assert_eq!(yaml, "license: apache-2.0\ntags: [a, b]\n");
        assert_eq!(body, "# Title\n\nText.\n");
        assert_eq!(card_data(r).unwrap(), json!({ "license": "apache-2.0", "tags": ["a", "b"] }));
        assert!(front_matter("# no card data\n").is_none());
        assert!(front_matter("---\nnever closed\n").is_none());
        assert!(card_data("---\n- a list\n---\n").is_none(), "card data is a mapping");
    }

    #[test]
    fn meta_from_card_config_and_counters() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("org/m");
        std::fs::create_dir_all(dir.join(".hub")).unwrap();
        std::fs::write(dir.join("README.md"), "---\nlicense: mit\nlanguage: [en]\ntags: [chat]\n---\nA model.\n").unwrap();
        std::fs::write(dir.join("config.json"), r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}"#).unwrap();
        std::fs::write(dir.join("model.safetensors"), b"x").unwrap();
        std::fs::write(dir.join(".hub/config.json"), r#"{"downloads": 42, "likes": 3}"#).unwrap();
        let repo = RepoDir::find(d.path(), "org", "m").unwrap();
        let rev = repo.revision("main", &Default::default()).unwrap().unwrap();
        let m = model_meta(&repo, &rev);
        assert_eq!((m.downloads, m.likes), (42, 3));
        assert_eq!(m.pipeline_tag.as_deref(), Some("text-generation"));
        assert_eq!(m.tags, ["transformers", "safetensors", "llama", "text-generation", "chat", "en", "license:mit", "region:us"]);
        assert_eq!(m.card_data.unwrap()["license"], "mit");
    }

    #[test]
    fn sorted_by_downloads_most_first() {
        let mut e = vec![json!({"id": "a", "downloads": 1}), json!({"id": "b", "downloads": 9})];
        sort_entries(&mut e, Some("downloads"));
        assert_eq!(e[0]["id"], "b");
    }
}
