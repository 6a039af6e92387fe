//! A webhook receiver for tests: answers 503 to the first `failures` requests, then 200, and
//! keeps what it was sent. Shared by `training-job/tests/cli.rs` and `tests/e2e/`.

/// The `x-mlops-signature` header value of a body signed with `secret`.
pub fn mlops_signature(secret: &str, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A webhook receiver on localhost that answers 503 to its first `failures` requests, then 200.
pub struct Receiver {
    /// Where to POST.
    pub url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(u16, String, String)>>>,
}

impl Receiver {
    /// Listens on a free port.
    pub fn start(failures: usize) -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    headers.push_str(&lower);
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let mut seen = log.lock().unwrap();
                let status = if seen.len() < failures { 503 } else { 200 };
                seen.push((status, headers, String::from_utf8(body).unwrap()));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Receiver { url, seen }
    }

    /// (headers, body) of the requests answered 200.
    pub fn accepted(&self) -> Vec<(String, String)> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(s, _, _)| *s == 200)
            .map(|(_, h, b)| (h.clone(), b.clone()))
            .collect()
    }

    /// Requests refused (the first `failures`).
    pub fn refused(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _, _)| *s != 200)
            .count()
    }
}
