//! A local stand-in for the Hugging Face Hub: serves folders under the Hub's URL layout
//! (`/{org}/{name}/resolve/main/{path}`) with what hf-hub's sync client needs — range requests
//! (`206` with `Content-Range`), a stable `ETag` (the file's SHA-256) and `X-Repo-Commit` — and
//! logs every request. `cut_once` ends one response early, as a dropped connection would.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// One fixed commit for every repository.
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Default)]
struct State {
    /// (URL path, Range header) of every request.
    log: Vec<(String, String)>,
    /// The next data response for a path ending so stops after this many bytes.
    cut: Option<(String, usize)>,
}

/// The running server (it lives until the test process ends).
pub struct HubServer {
    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

impl HubServer {
    /// Serves each `(URL prefix, folder)`: `/org/name/resolve/main/` + a relative path.
    pub fn start(routes: Vec<(&'static str, PathBuf)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                serve(stream, &routes, &shared);
            }
        });
        Self { endpoint, state }
    }

    /// Every request so far: (path, Range).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().log.clone()
    }

    /// Forgets the requests so far.
    pub fn clear(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// The next data response for a path ending in `suffix` sends only `bytes` of its body.
    pub fn cut_once(&self, suffix: &str, bytes: usize) {
        self.state.lock().unwrap().cut = Some((suffix.to_string(), bytes));
    }
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[String], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn serve(mut stream: TcpStream, routes: &[(&'static str, PathBuf)], state: &Mutex<State>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request).into_owned();
    let path = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("")
        .to_string();
    let range = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("range")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    state
        .lock()
        .unwrap()
        .log
        .push((path.clone(), range.clone()));
    let file = routes.iter().find_map(|(prefix, dir)| {
        let rest = path.strip_prefix(prefix)?;
        (!rest.split('/').any(|s| s == "..")).then(|| dir.join(rest))
    });
    let Some(data) = file.and_then(|f| std::fs::read(f).ok()) else {
        respond(
            &mut stream,
            "404 Not Found",
            &["Content-Length: 0".into()],
            &[],
        );
        return;
    };
    let size = data.len();
    let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some((s, e)) => (
            s.parse::<usize>().unwrap_or(0),
            e.parse::<usize>()
                .map_or(size.saturating_sub(1), |e| e.min(size - 1)),
        ),
        None => (0, size.saturating_sub(1)),
    };
    if start >= size {
        let headers = [
            format!("Content-Range: bytes */{size}"),
            "Content-Length: 0".into(),
        ];
        respond(&mut stream, "416 Range Not Satisfiable", &headers, &[]);
        return;
    }
    let body = &data[start..=end];
    let headers = [
        format!("Content-Range: bytes {start}-{end}/{size}"),
        format!("Content-Length: {}", body.len()),
        format!("ETag: \"{}\"", pgp_core::bundle::sha256_hex(&data)),
        format!("X-Repo-Commit: {COMMIT}"),
        "Accept-Ranges: bytes".into(),
    ];
    // A probe (`bytes=0-0`) is never cut; the data request after it may be.
    let cut = {
        let mut s = state.lock().unwrap();
        match &s.cut {
            Some((suffix, n)) if path.ends_with(suffix.as_str()) && end > start => {
                let n = *n;
                s.cut = None;
                Some(n)
            }
            _ => None,
        }
    };
    let body = match cut {
        Some(n) => &body[..n.min(body.len())],
        None => body,
    };
    respond(&mut stream, "206 Partial Content", &headers, body);
}
