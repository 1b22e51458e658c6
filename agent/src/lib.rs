//! weir-agent: receives events at a site, commits each to a durable queue, and forwards the
//! queue to the aggregator over mutual-TLS QUIC.

pub mod config;
pub mod pipeline;
pub mod queue;
