//! `cargo run --example delay_proxy -- DELAY_MS TARGET...`: the e2e tests' delaying TCP
//! proxy (`tests/support/delay_proxy.rs`) as a program, for `bench/far.sh`. Every TARGET
//! (`host:port`) is forwarded over one far link that delays each chunk by DELAY_MS
//! milliseconds each way; the loopback port of each is printed, one line per target, in
//! order. SIGUSR1 cuts the link (nothing forwarded, nothing closed), SIGUSR2 heals it.

#[path = "../tests/support/delay_proxy.rs"]
mod delay_proxy;

use std::io::Write;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut arguments = std::env::args().skip(1);
    let usage = "usage: delay_proxy DELAY_MS TARGET...";
    let delay: u64 = arguments
        .next()
        .and_then(|ms| ms.parse().ok())
        .expect(usage);
    let link = delay_proxy::Link::new(Duration::from_millis(delay));
    let mut out = std::io::stdout();
    for target in arguments {
        writeln!(out, "{}", link.forward(&target)).expect("write the port");
    }
    out.flush().expect("write the ports");
    let mut cut = signal(SignalKind::user_defined1()).expect("SIGUSR1");
    let mut heal = signal(SignalKind::user_defined2()).expect("SIGUSR2");
    loop {
        tokio::select! {
            _ = cut.recv() => link.partition(),
            _ = heal.recv() => link.heal(),
        }
    }
}
