//! A minimal HTTP/1.1 client for the tests' requests to services they started on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `GET path` on `addr` over HTTP/1.0 (so that no server chunks the body): the status code and
/// the body; `None` if nothing answers.
pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    get_with(addr, path, &[])
}

/// [`get`] with extra request headers (`name`, `value`).
pub fn get_with(addr: &str, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let headers: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// The values of the samples in a Prometheus exposition whose line starts with `prefix`
/// (a metric name, or a name with some of its labels).
pub fn samples<'a>(metrics: &'a str, prefix: &'a str) -> impl Iterator<Item = f64> + 'a {
    metrics.lines().filter(move |l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The `host:port` of a service's first stderr line, `... http://HOST:PORT/metrics ...`.
pub fn announced_address(first_line: &str) -> String {
    let addr = first_line.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_default();
    assert!(addr.starts_with("127.0.0.1:"), "no 127.0.0.1 address in {first_line:?}");
    addr.to_string()
}
