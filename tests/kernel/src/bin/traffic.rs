//! The kernel tests' traffic generator: it makes connections and prints,
//! as JSON lines, every flow it made and every byte it sent (the ground
//! truth the tests compare flowtrack's output with). Servers print
//! `ready PORT` and serve until killed.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use clap::{Parser, Subcommand};
use flowtrack_kernel_tests::GeneratedFlow;
use socket2::{Domain, Protocol, Socket, Type};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// TCP echo server: reads to EOF, writes it all back, closes.
    ServeTcp {
        addr: SocketAddr,
        /// Echo only the first BYTES and close at once, without waiting
        /// for the client's FIN.
        #[arg(long, value_name = "BYTES")]
        close_after: Option<usize>,
    },
    /// UDP echo server.
    ServeUdp { addr: SocketAddr },
    /// TCP connections that send BYTES and read the echo.
    Tcp {
        dst: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        bytes: usize,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Send half the bytes, stay idle this long, then send the rest.
        #[arg(long)]
        pause_ms: Option<u64>,
        /// After sending, once the server has acknowledged and read it all,
        /// reset the connection (SO_LINGER 0) instead of closing it and
        /// reading the echo.
        #[arg(long)]
        reset: bool,
        /// Read the echo of the BYTES before closing, instead of closing
        /// the sending side first: beside `serve-tcp --close-after BYTES`,
        /// both ends close at once and their FINs cross.
        #[arg(long, conflicts_with_all = ["reset", "pause_ms"])]
        close_after_echo: bool,
        /// Threads making the COUNT connections between them.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        threads: u16,
    },
    /// A connected UDP socket that sends DATAGRAMS of BYTES and reads the echoes.
    Udp {
        dst: SocketAddr,
        #[arg(long, default_value_t = 100)]
        bytes: usize,
        #[arg(long, default_value_t = 1)]
        datagrams: usize,
    },
    /// A TCP connection to a port nobody listens on.
    Refused { dst: SocketAddr },
    /// One ICMP (or ICMPv6) echo request and its reply, over a raw socket.
    Icmp {
        dst: SocketAddr,
        #[arg(long, default_value_t = 4242)]
        id: u16,
    },
}

fn main() -> io::Result<()> {
    match Cli::parse().command {
        Command::ServeTcp { addr, close_after } => serve_tcp(addr, close_after),
        Command::ServeUdp { addr } => serve_udp(addr),
        Command::Tcp {
            dst,
            bytes,
            count,
            pause_ms,
            reset,
            close_after_echo,
            threads,
        } => {
            let close = if reset {
                Close::Reset
            } else if close_after_echo {
                Close::AfterEcho
            } else {
                Close::SendingSideFirst
            };
            let pause = pause_ms.map(Duration::from_millis);
            let threads = usize::from(threads);
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|index| {
                        // The first `count % threads` make one more.
                        let share = count / threads + usize::from(index < count % threads);
                        scope.spawn(move || {
                            (0..share).try_for_each(|_| tcp(dst, bytes, pause, close))
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .try_for_each(|worker| worker.join().expect("a connection thread"))
            })
        }
        Command::Udp {
            dst,
            bytes,
            datagrams,
        } => udp(dst, bytes, datagrams),
        Command::Refused { dst } => refused(dst),
        Command::Icmp { dst, id } => icmp(dst, id),
    }
}

fn report(flow: &GeneratedFlow) {
    println!(
        "{}",
        serde_json::to_string(flow).expect("a flow serializes")
    );
}

fn ready(port: u16) {
    println!("ready {port}");
    let _ = io::stdout().flush();
}

fn serve_tcp(addr: SocketAddr, close_after: Option<usize>) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    ready(listener.local_addr()?.port());
    for stream in listener.incoming() {
        let mut stream = stream?;
        std::thread::spawn(move || {
            let mut data = Vec::new();
            let read = match close_after {
                Some(bytes) => (&mut stream).take(bytes as u64).read_to_end(&mut data),
                None => stream.read_to_end(&mut data),
            };
            if read.is_ok() {
                let _ = stream.write_all(&data);
            }
        });
    }
    Ok(())
}

/// How a generated TCP connection ends.
#[derive(Clone, Copy)]
enum Close {
    /// Shut the sending side down, read the echo to EOF, close.
    SendingSideFirst,
    /// Read as many bytes as were sent, then close.
    AfterEcho,
    /// Reset (SO_LINGER 0) once the peer has read everything; no echo
    /// read.
    Reset,
}

fn serve_udp(addr: SocketAddr) -> io::Result<()> {
    let socket = UdpSocket::bind(addr)?;
    ready(socket.local_addr()?.port());
    let mut buffer = vec![0_u8; 65_536];
    loop {
        let (len, peer) = socket.recv_from(&mut buffer)?;
        socket.send_to(&buffer[..len], peer)?;
    }
}

fn tcp(dst: SocketAddr, bytes: usize, pause: Option<Duration>, close: Close) -> io::Result<()> {
    let mut stream = TcpStream::connect(dst)?;
    let src = stream.local_addr()?;
    let payload = vec![b'x'; bytes];
    let (first, rest) = payload.split_at(if pause.is_some() { bytes / 2 } else { bytes });
    stream.write_all(first)?;
    if let Some(pause) = pause {
        // The behaviour asked for: an idle connection.
        std::thread::sleep(pause);
    }
    stream.write_all(rest)?;
    let mut echo = Vec::new();
    match close {
        Close::Reset => {
            // Let the peer read and acknowledge everything first: a packet
            // arriving after the reset would draw one from the kernel
            // itself, which no socket sends (so no cgroup program sees it).
            wait_until_read(src, dst)?;
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
        }
        Close::AfterEcho => {
            echo.resize(bytes, 0);
            stream.read_exact(&mut echo)?;
        }
        Close::SendingSideFirst => {
            stream.shutdown(Shutdown::Write)?;
            stream.read_to_end(&mut echo)?;
        }
    }
    drop(stream);
    report(&GeneratedFlow::new(
        6,
        src,
        dst,
        bytes as u64,
        echo.len() as u64,
        0,
    ));
    Ok(())
}

/// Waits until the connection from `src` to `dst` is quiet: everything
/// `src` sent acknowledged (its send queue empty) and read by the server
/// (its receive queue empty, when the server is in this namespace), in
/// two readings of `/proc/self/net/tcp*` in a row, so that the server's
/// last window update is out too. Ten seconds at the most.
fn wait_until_read(src: SocketAddr, dst: SocketAddr) -> io::Result<()> {
    let table = if src.is_ipv4() { "tcp" } else { "tcp6" };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut quiet_readings = 0;
    while quiet_readings < 2 {
        if std::time::Instant::now() > deadline {
            return Err(io::Error::other(format!("{src} -> {dst} never went quiet")));
        }
        std::thread::sleep(Duration::from_millis(1));
        let sockets = std::fs::read_to_string(format!("/proc/self/net/{table}"))?;
        let queues = |local: u16, remote: u16| {
            sockets.lines().skip(1).find_map(|line| {
                // sl local_address rem_address st tx_queue:rx_queue ...
                let fields: Vec<&str> = line.split_whitespace().collect();
                let port =
                    |address: &str| u16::from_str_radix(address.rsplit(':').next()?, 16).ok();
                if port(fields.get(1)?)? != local || port(fields.get(2)?)? != remote {
                    return None;
                }
                let (tx, rx) = fields.get(4)?.split_once(':')?;
                Some((
                    u64::from_str_radix(tx, 16).ok()?,
                    u64::from_str_radix(rx, 16).ok()?,
                ))
            })
        };
        let sent = queues(src.port(), dst.port()).is_some_and(|(tx, _)| tx == 0);
        let read = queues(dst.port(), src.port()).is_none_or(|(_, rx)| rx == 0);
        quiet_readings = if sent && read { quiet_readings + 1 } else { 0 };
    }
    Ok(())
}

fn udp(dst: SocketAddr, bytes: usize, datagrams: usize) -> io::Result<()> {
    let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("literal");
    let socket = UdpSocket::bind(bind)?;
    socket.connect(dst)?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let src = socket.local_addr()?;
    let payload = vec![b'u'; bytes];
    let mut buffer = vec![0_u8; bytes + 1];
    let mut received = 0;
    for _ in 0..datagrams {
        socket.send(&payload)?;
        received += socket.recv(&mut buffer)? as u64;
    }
    drop(socket);
    report(&GeneratedFlow::new(
        17,
        src,
        dst,
        (bytes * datagrams) as u64,
        received,
        datagrams as u64,
    ));
    Ok(())
}

fn refused(dst: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    // Bind first, so that the local address is known when connect fails.
    let local: SocketAddr = match (dst.is_ipv4(), dst.ip().is_loopback()) {
        (true, true) => "127.0.0.1:0",
        (true, false) => "0.0.0.0:0",
        (false, true) => "[::1]:0",
        (false, false) => "[::]:0",
    }
    .parse()
    .expect("literal");
    socket.bind(&local.into())?;
    let src = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("no local address"))?;
    match socket.connect(&dst.into()) {
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {}
        other => {
            return Err(io::Error::other(format!(
                "expected a refusal, got {other:?}"
            )));
        }
    }
    report(&GeneratedFlow::new(6, src, dst, 0, 0, 0));
    Ok(())
}

fn icmp(dst: SocketAddr, id: u16) -> io::Result<()> {
    let (domain, protocol, request, number) = if dst.is_ipv4() {
        (Domain::IPV4, Protocol::ICMPV4, 8_u8, 1_u8)
    } else {
        (Domain::IPV6, Protocol::ICMPV6, 128_u8, 58_u8)
    };
    let socket = Socket::new(domain, Type::RAW, Some(protocol))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let payload = [0x5a_u8; 32];
    let mut message = vec![request, 0, 0, 0];
    message.extend(id.to_be_bytes());
    message.extend(1_u16.to_be_bytes()); // sequence
    message.extend(payload);
    if dst.is_ipv4() {
        let sum = checksum(&message);
        message[2..4].copy_from_slice(&sum.to_be_bytes());
    } // the kernel computes ICMPv6 checksums on raw sockets
    socket.send_to(&message, &dst.into())?;
    let mut buffer = [MaybeUninit::<u8>::uninit(); 1500];
    let (len, _) = socket.recv_from(&mut buffer)?;
    let src = SocketAddr::new(
        if dst.is_ipv4() {
            "127.0.0.1".parse().expect("literal")
        } else {
            "::1".parse().expect("literal")
        },
        id,
    );
    let dst = SocketAddr::new(dst.ip(), u16::from(request) << 8);
    report(&GeneratedFlow::new(
        number,
        src,
        dst,
        message.len() as u64,
        len as u64,
        1,
    ));
    Ok(())
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
