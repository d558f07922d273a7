//! The relay alone, for experiments and benchmarks without the daemon:
//! `cargo run --release -p parley-turn --example standalone -- 127.0.0.1:3500 SECRET [ALLOWED_CIDR...]`
//! (UDP and TCP on the address; stops on Ctrl-C.)

use parley_turn::{PeerPolicy, Relay, RelayOptions, RelaySockets};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(secret)) = (args.first(), args.get(1)) else {
        eprintln!("usage: standalone LISTEN SECRET [ALLOWED_CIDR...]");
        std::process::exit(2);
    };
    let listen: std::net::SocketAddr = listen
        .parse()
        .expect("LISTEN is an address like 127.0.0.1:3500");
    let mut options = RelayOptions::new(secret.clone(), listen.ip());
    options.peer_policy = PeerPolicy::from_ranges(&args[2..]).expect("valid CIDR ranges");
    options.max_allocations_per_user = 0;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    let sockets = RelaySockets::bind(listen, true, workers, true).expect("bind");
    let relay = Relay::start(options, sockets).await.expect("start");
    eprintln!("relay on {listen}");
    let _ = tokio::signal::ctrl_c().await;
    relay.shutdown().await;
}
