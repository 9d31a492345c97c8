//! `mixnn status`: what a running node reports on its metrics endpoint.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Args;
use mixnn_node::metrics::{DropReason, parse_text, scrape};

#[derive(Args)]
pub struct StatusArgs {
    /// The node's metrics address (its `--metrics` value), e.g.
    /// `127.0.0.1:9100`.
    #[arg(long, value_name = "ADDR")]
    pub metrics: SocketAddr,
    /// Print the raw Prometheus text instead of the summary.
    #[arg(long)]
    pub raw: bool,
}

pub fn run(a: StatusArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let text = rt.block_on(scrape(a.metrics)).with_context(|| {
        format!(
            "no node answers at {0} (is `mixnn node --metrics {0}` running?)",
            a.metrics
        )
    })?;
    if a.raw {
        print!("{text}");
        return Ok(());
    }
    let series = parse_text(&text);
    let get = |name: &str| {
        series
            .iter()
            .find(|(s, _)| s == name)
            .map(|(_, v)| *v as u64)
            .unwrap_or(0)
    };
    let label = |name: &str, key: &str| {
        series.iter().find_map(|(s, _)| {
            let rest = s.strip_prefix(name)?.strip_prefix('{')?;
            let start = rest.find(&format!("{key}=\""))? + key.len() + 2;
            let end = rest[start..].find('"')? + start;
            Some(rest[start..end].to_string())
        })
    };
    println!(
        "node       {}",
        label("mixnn_node_info", "peer_id").unwrap_or_else(|| "?".into())
    );
    println!(
        "version    {}",
        label("mixnn_node_info", "version").unwrap_or_else(|| "?".into())
    );
    println!("uptime     {} s", get("mixnn_uptime_seconds"));
    println!("peers      {} connected", get("mixnn_peers_connected"));
    println!("mix epoch  {}", get("mixnn_mix_key_epoch"));
    println!(
        "packets    in {} ({} bytes), out {} ({} bytes)",
        get("mixnn_packets_in_total"),
        get("mixnn_packet_bytes_in_total"),
        get("mixnn_packets_out_total"),
        get("mixnn_packet_bytes_out_total")
    );
    println!(
        "streams    inbound {}, outbound {}",
        get("mixnn_packet_streams{direction=\"inbound\"}"),
        get("mixnn_packet_streams{direction=\"outbound\"}")
    );
    println!(
        "publish    ok {}, failed {}",
        get("mixnn_descriptor_publish_total{result=\"ok\"}"),
        get("mixnn_descriptor_publish_total{result=\"failed\"}")
    );
    let drops: Vec<String> = DropReason::ALL
        .iter()
        .map(|r| {
            let n = get(&format!(
                "mixnn_packets_dropped_total{{reason=\"{}\"}}",
                r.label()
            ));
            format!("{} {n}", r.label())
        })
        .collect();
    println!("drops      {}", drops.join(", "));
    Ok(())
}
