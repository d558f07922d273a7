mod calls_admin;
mod daemon;
mod foundation;
mod front_door;
mod hostile_relay;
mod loadgen;
mod relay;
mod tls;
