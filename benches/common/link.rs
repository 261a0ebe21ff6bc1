//! A network link of a given speed in front of a loopback server: a TCP proxy whose two
//! directions each share one token bucket over all connections, as a runner's NIC is shared
//! by every parallel upload. On loopback the server and the client share this machine's
//! cores, so without a link a benchmark measures CPU alone; with one it also measures how
//! well a client keeps a real link busy.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Bucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// At most 256 KiB of burst: enough for the proxy's chunk size, too little to hide the
    /// rate.
    const BURST: f64 = 256.0 * 1024.0;

    fn take(&self, n: usize) {
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap();
                let now = Instant::now();
                s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(Self::BURST);
                s.1 = now;
                if s.0 >= n as f64 {
                    s.0 -= n as f64;
                    return;
                }
                (n as f64 - s.0) / self.rate
            };
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
    }
}

/// Start the proxy to `127.0.0.1:upstream` at `mbit` megabits per second each way; returns its
/// port. It runs until the process ends.
pub fn start(upstream: u16, mbit: f64) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let rate = mbit * 1e6 / 8.0;
    let bucket = || {
        Arc::new(Bucket {
            rate,
            state: Mutex::new((0.0, Instant::now())),
        })
    };
    let (up, down) = (bucket(), bucket());
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (up, down) = (up.clone(), down.clone());
            std::thread::spawn(move || pipe(client, server, &up));
            std::thread::spawn(move || pipe(s2, c2, &down));
        }
    });
    port
}

/// One direction of one connection. Bytes cross the link at its rate into a buffer the
/// receiver drains at its own pace (up to 4 MiB, like a socket's window), so time on the link
/// and time in a slow server overlap as they do over a real network, instead of adding up.
fn pipe(mut from: TcpStream, mut to: TcpStream, bucket: &Bucket) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
    let writer = std::thread::spawn(move || {
        for chunk in rx {
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bucket.take(n);
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}
