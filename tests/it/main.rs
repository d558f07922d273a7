mod daemon;
mod foundation;
mod loadgen;
mod relay;
mod tls;
