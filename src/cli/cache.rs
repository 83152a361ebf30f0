//! `qlora cache ls|rm|prune|verify`: the Hugging Face cache as `hf cache` shows it, with a dry
//! run for everything that deletes (`--dry-run` says what would go and what it frees).

use qlora_studio::hub::cache::manage::{self, CleanupPlan, Target};
use qlora_studio::hub::cache::{self as hub_cache};
use qlora_studio::hub::{HubConfig, human};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Cache folder (default: HF_HUB_CACHE, else $HF_HOME/hub).
    #[arg(long, global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Cached models, their revisions and sizes.
    Ls {
        /// Also list every revision and file.
        #[arg(long)]
        files: bool,
    },
    /// Delete a model, one revision of it, or one file.
    Rm {
        repo: String,
        /// Only this revision (branch, tag or commit).
        #[arg(long)]
        revision: Option<String>,
        /// Only this file of the revision (default revision: main).
        #[arg(long)]
        file: Option<String>,
        /// Say what would be deleted and freed, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete detached revisions, partial downloads and unused blobs.
    Prune {
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-hash cached files against the Hub's checksums.
    Verify { repo: Option<String> },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cache_dir = args.cache_dir.unwrap_or_else(|| HubConfig::from_env().cache_dir);
    match args.cmd {
        Cmd::Ls { files } => ls(&cache_dir, files, args.json),
        Cmd::Rm { repo, revision, file, dry_run } => {
            let target = match (revision, file) {
                (rev, Some(path)) => Target::File { repo, revision: rev.unwrap_or_else(|| "main".into()), path },
                (Some(revision), None) => Target::Revision { repo, revision },
                (None, None) => Target::Repo(repo),
            };
            cleanup(manage::plan_delete(&cache_dir, &target)?, dry_run, args.json)
        }
        Cmd::Prune { dry_run } => cleanup(manage::plan_prune(&cache_dir), dry_run, args.json),
        Cmd::Verify { repo } => {
            let report = manage::verify(&cache_dir, repo.as_deref(), &Default::default())?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("checked {} files ({})", report.files_checked, human(report.bytes_checked));
                for c in &report.corrupt {
                    println!("CORRUPT {} {}: expected {}, got {}", c.repo, c.path, c.expected, c.actual);
                }
            }
            anyhow::ensure!(
                report.corrupt.is_empty(),
                "{} corrupt file(s); delete them with `qlora cache rm REPO --file PATH` and download again",
                report.corrupt.len()
            );
            Ok(())
        }
    }
}

fn ls(cache_dir: &std::path::Path, files: bool, json: bool) -> anyhow::Result<()> {
    let report = hub_cache::scan(cache_dir);
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("{:<50} {:>10} {:>6} {:>5}  refs", "model", "size", "files", "revs");
    for r in &report.repos {
        let refs: Vec<&str> = r.revisions.iter().flat_map(|v| v.refs.iter().map(String::as_str)).collect();
        println!("{:<50} {:>10} {:>6} {:>5}  {}", r.repo, human(r.size_on_disk), r.nb_files, r.revisions.len(), refs.join(","));
        if !r.partial_files.is_empty() {
            let b: u64 = r.partial_files.iter().map(|p| p.bytes).sum();
            println!("  {} partial download(s), {}", r.partial_files.len(), human(b));
        }
        if files {
            for v in &r.revisions {
                let refs = if v.refs.is_empty() { "detached".to_string() } else { v.refs.join(",") };
                println!("  {} ({refs}) {}", v.commit, human(v.size_on_disk));
                for f in &v.files {
                    println!("    {:<46} {:>10}{}", f.path, human(f.size), if f.shared { "  shared" } else { "" });
                }
            }
        }
    }
    println!("total {} in {}", human(report.size_on_disk), cache_dir.display());
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

fn cleanup(plan: CleanupPlan, dry_run: bool, json: bool) -> anyhow::Result<()> {
    if !dry_run {
        manage::execute(&plan)?;
    }
    if json {
        println!("{}", serde_json::json!({ "dry_run": dry_run, "plan": plan }));
        return Ok(());
    }
    for line in &plan.summary {
        println!("{} {line}", if dry_run { "would delete" } else { "deleted" });
    }
    println!("{} {}", if dry_run { "would free" } else { "freed" }, human(plan.freed_bytes));
    Ok(())
}
