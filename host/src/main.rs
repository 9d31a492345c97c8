//! `mixnn`: one binary for every role (designer commands today; node and
//! bootstrap join it with the network).

mod cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mixnn",
    version,
    about = "Train and serve a neural network whose layers live on different machines, each in a WebAssembly sandbox."
)]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info`, `mixnn_sandbox=debug`.
    #[arg(long, global = true, env = "MIXNN_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write an untrained ONNX model (the MixNN paper's MLP or LeNet-5).
    Model(cmd::model::ModelArgs),
    /// Cut an ONNX model into per-layer shards and print the plan.
    Split(cmd::split::SplitArgs),
    /// Train a split model (today: in one process with `--local`).
    Train(cmd::train::TrainArgs),
    /// Performance figures measured against a baseline in the same run.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Inference of a test set through a pool cascade: the one `train --pool
    /// --keep-deployed` left running (attached to again from the job
    /// directory), or the job's latest checkpoint deployed afresh
    /// (`--redeploy`); test batches pipelined, accuracy and inferences per
    /// second beside the same model in one process.
    Infer(cmd::infer::InferArgs),
    /// The paper's MNIST experiment end to end on the bundled data.
    Demo(cmd::demo::DemoArgs),
    /// Run a bootstrap peer: Kademlia entry point and pool directory of signed node descriptors.
    Bootstrap(cmd::bootstrap::BootstrapArgs),
    /// Run a pool node: persistent identity, mix keys, descriptor, packet streams.
    Node(cmd::node::NodeArgs),
    /// Show what a running node reports on its metrics endpoint.
    Status(cmd::status::StatusArgs),
    /// Leakage audit of a cut: model-inversion attacks on Z_K, PSNR/SSIM.
    Audit(cmd::audit::AuditArgs),
    /// The Bident paper's table: its 8 fork-join networks trained to a
    /// target accuracy (epochs needed, parameters per side, time).
    BidentTable(cmd::bident_table::BidentTableArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Model(a) => cmd::model::run(a),
        Command::Split(a) => cmd::split::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Infer(a) => cmd::infer::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Bootstrap(a) => cmd::bootstrap::run(a),
        Command::Node(a) => cmd::node::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Audit(a) => cmd::audit::run(a),
        Command::BidentTable(a) => cmd::bident_table::run(a),
    }
}
