//! `qlora-hub-testserver --root DIR --port N`: the local Hub as a process, for the app's
//! end-to-end tests, the planner's tests and the download benchmarks. Runs until killed.

use clap::Parser;
use qlora_hub_testserver::TestHub;

#[derive(Parser)]
#[command(about = "A local Hugging Face Hub serving model folders (<root>/<org>/<name>/...) on loopback")]
struct Args {
    /// Folder of model repositories: <root>/<org>/<name>/<files>.
    #[arg(long)]
    root: std::path::PathBuf,
    /// Port on 127.0.0.1 (0: any free port; the chosen URL is printed).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Gate a repository: `org/name=TOKEN[,TOKEN...]` (files need one of the tokens). Repeatable.
    #[arg(long = "gated")]
    gated: Vec<String>,
    /// Throttle every file to this many bytes a second (to watch progress or test cancel).
    #[arg(long)]
    throttle: Option<u64>,
    /// Wait this many milliseconds before answering each GET of file content (a far server:
    /// what concurrent downloads hide).
    #[arg(long)]
    latency_ms: Option<u64>,
}

fn main() {
    let args = Args::parse();
    if !args.root.is_dir() {
        eprintln!("error: --root {} is not a folder; create <root>/<org>/<name>/ with model files", args.root.display());
        std::process::exit(2);
    }
    let hub = match TestHub::start_on(&args.root, args.port) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: cannot listen on 127.0.0.1:{}: {e}; pick another --port", args.port);
            std::process::exit(1);
        }
    };
    for g in &args.gated {
        let (repo, tokens) = g.split_once('=').unwrap_or((g, ""));
        let tokens: Vec<&str> = tokens.split(',').filter(|t| !t.is_empty()).collect();
        hub.gate(repo, &tokens);
    }
    if let Some(rate) = args.throttle {
        hub.add_fault(qlora_hub_testserver::FaultRule::any_file(qlora_hub_testserver::Fault::Throttle { bytes_per_sec: rate }));
    }
    if let Some(ms) = args.latency_ms {
        let secs = ms as f64 / 1000.0;
        hub.add_fault(qlora_hub_testserver::FaultRule::any_file(qlora_hub_testserver::Fault::Latency { secs }));
    }
    println!("{}", hub.url());
    loop {
        std::thread::park();
    }
}
