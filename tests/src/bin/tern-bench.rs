//! `tern-bench`: Tern's benchmarks, each against a baseline measured in the same run.
//!
//! ```text
//! cargo run --release -p tern-tests --bin tern-bench -- crypto
//! cargo run --release -p tern-tests --bin tern-bench -- all --json
//! ```

use anyhow::{Context, bail};
use clap::Parser;
use tern_tests::bench::{ATTACK_ARG, Opts, PARTS, Report, SUITES, flood_attacker};

/// Run Tern's benchmarks. Every figure is printed with the baseline it was measured against in
/// the same run and the ratio value / baseline.
#[derive(Parser, Debug)]
#[command(name = "tern-bench", version)]
struct Args {
    /// Suites to run (`all` for every suite).
    #[arg(required = true)]
    suites: Vec<String>,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Tiny sizes only: checks that the suites run, the figures mean nothing.
    #[arg(long)]
    quick: bool,
}

fn main() -> anyhow::Result<()> {
    // The relay suite's flood runs start this binary again as their attacker process.
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some(ATTACK_ARG) {
        let [addr, to, n] = &raw[2..] else {
            bail!("usage: tern-bench {ATTACK_ARG} <relay address> <mailbox> <identities>");
        };
        return flood_attacker(addr, to, n.parse().context("identities")?);
    }
    let args = Args::parse();
    let names: Vec<&str> = SUITES.iter().map(|(n, _)| *n).collect();
    let chosen: Vec<&str> = if args.suites.iter().any(|s| s == "all") {
        names
            .iter()
            .copied()
            .filter(|n| !PARTS.contains(n))
            .collect()
    } else {
        for s in &args.suites {
            if !names.contains(&s.as_str()) {
                bail!("unknown suite {s:?}; suites are: {}", names.join(", "));
            }
        }
        args.suites.iter().map(String::as_str).collect()
    };
    if cfg!(debug_assertions) && !args.quick {
        eprintln!("warning: this is a debug build; run with --release for meaningful figures");
    }
    let opts = Opts { quick: args.quick };
    let mut report = Report::new(args.json);
    for name in chosen {
        let (_, run) = SUITES
            .iter()
            .find(|(n, _)| *n == name)
            .context("suite vanished")?;
        if !args.json {
            eprintln!("suite {name}");
        }
        run(&opts, &mut report).with_context(|| format!("suite {name} failed"))?;
    }
    report.finish();
    Ok(())
}
