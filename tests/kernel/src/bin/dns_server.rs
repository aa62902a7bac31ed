//! The kernel tests' DNS server: answers A, AAAA and CNAME records it is
//! given (following CNAME chains into the answer, as a resolver does),
//! NXDOMAIN for other names, over UDP and TCP on one port. An answer over
//! 512 bytes goes over UDP truncated (TC, the question kept) and whole over
//! TCP, where a connection may carry several queries in turn (glibc sends
//! its A and AAAA queries down one). Prints `ready PORT`, serves until
//! killed.
//!
//! ```text
//! dns-server 127.0.0.1:53 --record www.test CNAME edge.test \
//!     --record edge.test A 10.0.0.2 --big big.test 40 --synthesize race.test
//! ```

#[path = "dns_server/zone.rs"]
mod zone;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;

use clap::Parser;
use zone::{Transport, Zone};

#[derive(Parser)]
#[command(name = "dns-server")]
struct Cli {
    /// Where to listen, UDP and TCP (port 0: one free for both).
    addr: SocketAddr,
    /// A record: NAME TYPE VALUE, TYPE being A, AAAA or CNAME.
    #[arg(long, num_args = 3, value_names = ["NAME", "TYPE", "VALUE"])]
    record: Vec<String>,
    /// NAME answers COUNT A records (127.200.0.1 on): past 512 bytes from
    /// 31 on, so truncated over UDP.
    #[arg(long, num_args = 2, value_names = ["NAME", "COUNT"])]
    big: Vec<String>,
    /// NAME answers SERVFAIL.
    #[arg(long, value_name = "NAME")]
    servfail: Vec<String>,
    /// Every `<n>.SUFFIX` answers the A record 127.0.0.1 + n.
    #[arg(long, value_name = "SUFFIX")]
    synthesize: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let zone = match zone(&cli) {
        Ok(zone) => Arc::new(zone),
        Err(error) => {
            eprintln!("dns-server: {error}");
            std::process::exit(2);
        }
    };
    if let Err(error) = serve(cli.addr, &zone) {
        eprintln!("dns-server: serving on {}: {error}", cli.addr);
        std::process::exit(1);
    }
}

/// The zone the command line describes.
fn zone(cli: &Cli) -> Result<Zone, String> {
    let mut zone = Zone::default();
    for record in cli.record.chunks(3) {
        zone.add(&record[0], &record[1], &record[2])?;
    }
    for big in cli.big.chunks(2) {
        let count = big[1]
            .parse()
            .map_err(|_| format!("--big {}: COUNT {:?} is not a number", big[0], big[1]))?;
        zone.add_big(&big[0], count);
    }
    for name in &cli.servfail {
        zone.fail(name);
    }
    if let Some(suffix) = &cli.synthesize {
        zone.synthesize(suffix);
    }
    Ok(zone)
}

/// Binds UDP and TCP on one port, says `ready PORT`, and answers.
fn serve(addr: SocketAddr, zone: &Arc<Zone>) -> io::Result<()> {
    let tcp = TcpListener::bind(addr)?;
    let port = tcp.local_addr()?.port();
    let udp = UdpSocket::bind(SocketAddr::new(addr.ip(), port))?;
    println!("ready {port}");
    io::stdout().flush()?;
    let tcp_zone = Arc::clone(zone);
    std::thread::spawn(move || {
        for stream in tcp.incoming().flatten() {
            let zone = Arc::clone(&tcp_zone);
            std::thread::spawn(move || serve_connection(stream, &zone));
        }
    });
    let mut buffer = [0_u8; 65_535];
    loop {
        let (len, peer) = udp.recv_from(&mut buffer)?;
        if let Some(answer) = zone.answer(&buffer[..len], Transport::Udp) {
            udp.send_to(&answer, peer)?;
        }
    }
}

/// Answers the length-prefixed queries of one TCP connection in turn,
/// until the client closes it.
fn serve_connection(mut stream: TcpStream, zone: &Zone) {
    let mut length = [0_u8; 2];
    while stream.read_exact(&mut length).is_ok() {
        let mut query = vec![0; usize::from(u16::from_be_bytes(length))];
        if stream.read_exact(&mut query).is_err() {
            return;
        }
        let Some(answer) = zone.answer(&query, Transport::Tcp) else {
            return;
        };
        let Ok(answer_length) = u16::try_from(answer.len()) else {
            return;
        };
        let framed = [&answer_length.to_be_bytes()[..], &answer].concat();
        if stream.write_all(&framed).is_err() {
            return;
        }
    }
}
