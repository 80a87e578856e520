//! One HTTP/1.1 request read off a keep-alive connection, for the small OTLP/HTTP receivers of
//! `nexus bench store --tracing-overhead` and of the end-to-end trace and metric tests (which
//! include this file by path), so both parse requests the same way.

use std::io::BufRead;

/// Reads the next request from `reader`: its request line (such as `POST /v1/traces HTTP/1.1`)
/// and its body (`Content-Length` bytes, at most `max_body`); `None` once the connection
/// closes or a request is cut short.
pub(crate) fn read(reader: &mut impl BufRead, max_body: usize) -> Option<(String, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length.min(max_body)];
    reader.read_exact(&mut body).ok()?;
    Some((line, body))
}
