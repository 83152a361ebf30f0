//! `qlora cache ls|rm|prune|verify`: the Hugging Face cache as `hf cache` shows it, with a dry
//! run for everything that deletes (`--dry-run` says what would go and what it frees).
//! `verify` re-hashes blobs against their names; `verify --hub` also re-lists each model on
//! the Hub and reports missing, changed and extra files.

use anyhow::Context;
use qlora_studio::hub::cache::manage::{self, CleanupPlan, Target};
use qlora_studio::hub::cache::{self as hub_cache, against_hub};
use qlora_studio::hub::{HubClient, HubConfig, human};
use std::path::{Path, PathBuf};

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
    /// Re-hash cached files against the checksums they were downloaded with; with --hub, also
    /// against the Hub's current listing (missing, changed and extra files).
    Verify {
        repo: Option<String>,
        /// Re-list each model on the Hub and compare its snapshot file by file (needs the network).
        #[arg(long)]
        hub: bool,
        /// The revision whose snapshot --hub checks.
        #[arg(long, default_value = "main", requires = "hub")]
        revision: String,
    },
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
        Cmd::Verify { repo, hub, revision } => {
            // Both checks run; either failing fails the command.
            let local = verify(&cache_dir, repo.as_deref(), args.json);
            if hub {
                verify_hub(&cache_dir, repo.as_deref(), &revision, args.json)?;
            }
            local
        }
    }
}

fn verify(cache_dir: &Path, repo: Option<&str>, json: bool) -> anyhow::Result<()> {
    let report = manage::verify(cache_dir, repo, &Default::default())?;
    if json {
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

/// Each model (or `repo`) with a snapshot of `revision`, checked against the Hub's listing.
fn verify_hub(cache_dir: &Path, repo: Option<&str>, revision: &str, json: bool) -> anyhow::Result<()> {
    let mut cfg = HubConfig::from_env();
    cfg.cache_dir = cache_dir.to_path_buf();
    let client = HubClient::new(cfg)?;
    let repos: Vec<String> = match repo {
        Some(r) => vec![r.to_string()],
        None => hub_cache::scan(cache_dir)
            .repos
            .into_iter()
            .map(|r| r.repo)
            .filter(|r| hub_cache::cached_listing(cache_dir, r, revision).is_some())
            .collect(),
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let mut bad = Vec::new();
    for r in &repos {
        let check = match rt.block_on(against_hub::check_against_hub(&client, r, revision, &Default::default())) {
            Ok(c) => c,
            // One model the Hub cannot answer for (removed, private) does not stop the others.
            Err(e) if repo.is_none() && e.code() != "offline" && e.code() != "network" => {
                eprintln!("error: {r}: {e}");
                bad.push(r.as_str());
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if json {
            println!("{}", serde_json::to_string(&check)?);
        } else {
            print_check(&check);
        }
        if !check.is_clean() {
            bad.push(r.as_str());
        }
    }
    anyhow::ensure!(
        bad.is_empty(),
        "{} differ from the Hub: run `qlora download REPO` to fetch the current files, and `qlora cache rm REPO --file PATH` for files the Hub no longer has",
        bad.join(", ")
    );
    Ok(())
}

fn print_check(c: &against_hub::HubCheck) {
    let short = |s: &str| s[..s.len().min(12)].to_string();
    println!(
        "{}@{}: cached {}, Hub {}; checked {} files ({})",
        c.repo,
        c.revision,
        short(&c.cached_commit),
        short(&c.hub_commit),
        c.files_checked,
        human(c.bytes_checked)
    );
    for m in &c.missing {
        println!("  MISSING {} ({}): a load needs it", m.path, human(m.size));
    }
    for f in &c.changed {
        let why = if f.updated_on_hub { "changed on the Hub since the download" } else { "the cached content is corrupt" };
        println!(
            "  CHANGED {}: Hub {} ({}), cached {} ({}): {why}",
            f.path,
            short(&f.hub_checksum),
            human(f.hub_size),
            short(&f.cached_checksum),
            human(f.cached_size)
        );
    }
    for p in &c.extra {
        println!("  EXTRA   {p}: the Hub no longer lists it");
    }
    if c.is_clean() {
        println!("  matches the Hub");
    }
}

fn ls(cache_dir: &Path, files: bool, json: bool) -> anyhow::Result<()> {
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
