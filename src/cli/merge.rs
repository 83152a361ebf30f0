//! `qlora merge --model DIR --adapter DIR --out DIR`: base + PEFT LoRA adapter as one dense
//! Hub-style folder that loads anywhere without peft.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The dense base model folder the adapter was trained on.
    #[arg(long)]
    pub model: PathBuf,
    /// The PEFT adapter folder (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Where to write the merged model.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let r = qlora_studio::train::merge::merge(&args.model, &args.adapter, &args.out)?;
    eprintln!("merged {} LoRA modules into {} shard(s)", r.merged_modules, r.shards);
    println!("{}", args.out.display());
    Ok(())
}
