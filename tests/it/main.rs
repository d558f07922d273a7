mod daemon;
mod foundation;
mod tls;
mod relay;
mod loadgen;
