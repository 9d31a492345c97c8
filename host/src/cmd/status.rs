//! `mixnn status`: what a running node reports on its metrics endpoint.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Args;
use mixnn_node::metrics::{parse_text, scrape};

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
    println!(
        "jobs       {} hosted, {} guest calls, {:.3} s in guests",
        get("mixnn_jobs"),
        get("mixnn_guest_calls_total"),
        get("mixnn_guest_microseconds_total") as f64 / 1e6
    );
    println!(
        "cover      loops sent {}, returned {}; drops sent {}",
        get("mixnn_cover_packets_total{kind=\"loop_sent\"}"),
        get("mixnn_cover_packets_total{kind=\"loop_returned\"}"),
        get("mixnn_cover_packets_total{kind=\"drop_sent\"}")
    );
    let by_label = |family: &str, label: &str| -> Vec<String> {
        let prefix = format!("{family}{{{label}=\"");
        series
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                Some(format!("{rest} {v}"))
            })
            .collect()
    };
    println!(
        "lengths    {}",
        by_label("mixnn_packet_lengths_total", "length").join(", ")
    );
    println!(
        "handled    {}",
        by_label("mixnn_packets_handled_total", "op").join(", ")
    );
    println!(
        "drops      {}",
        by_label("mixnn_packets_dropped_total", "reason").join(", ")
    );
    Ok(())
}
