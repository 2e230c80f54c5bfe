//! Demo backend: `cargo run --example backend -- NAME HOST:PORT`. Answers every request with a
//! JSON body naming itself (the same server the integration tests use).

#[path = "../tests/support/backend.rs"]
#[allow(dead_code)]
mod backend;

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "backend".into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let addr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("backend: invalid address {addr:?}: {e}");
            std::process::exit(2);
        }
    };
    let b = backend::Backend::start_on(&name, addr);
    eprintln!("backend {name} listening on {}", b.addr);
    loop {
        std::thread::park();
    }
}
