//! The HTTP origin's protocol, without I/O: an origin URL, the Range request for one chunk, and
//! what a response head means for it. Plain HTTP/1.1 on purpose: every byte is verified against
//! the signed manifest, so a CDN or any web server can be the origin, as apt's mirrors are.
//!
//! A response is usable only if it is `206 Partial Content` for exactly the bytes asked
//! (`Content-Range: bytes A-B/SIZE` with the release's size, and a length that matches): a server
//! that ignores Range (200), answers with another range, an error status or a malformed head is
//! refused with a line that says which, and the caller backs off. Redirects (301, 302, 303, 307,
//! 308) name the next URL, to a bounded depth the caller keeps.
//!
//! A followed release's manifest is polled with a conditional GET ([`manifest_request`]):
//! the validators of the last answer (`ETag`, `Last-Modified`) go back as `If-None-Match` and
//! `If-Modified-Since`, so an unchanged manifest costs one small request and a `304`.

/// Longest response head read; a server sending more is refused.
pub const MAX_HEAD: usize = 8 * 1024;
/// Redirects followed for one chunk before the origin counts as failed.
pub const MAX_REDIRECTS: u8 = 5;

/// `http://HOST[:PORT]/PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginUrl {
    pub host: String,
    pub port: u16,
    /// Starts with `/`; sent as it is.
    pub path: String,
}

impl OriginUrl {
    /// Parses `http://HOST[:PORT][/PATH]`; the error says what is wrong.
    pub fn parse(url: &str) -> Result<OriginUrl, String> {
        if url.starts_with("https://") {
            return Err(format!(
                "{url}: only plain http:// origins are supported (every chunk is verified against the signed manifest, so TLS adds no integrity)"
            ));
        }
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: not an http:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| format!("{url}: bad port {p:?}"))?)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        if host.is_empty() || !printable(host) || !printable(path) || port == 0 {
            return Err(format!("{url}: no host, or characters a request line cannot carry"));
        }
        Ok(OriginUrl { host: host.to_owned(), port, path: path.to_owned() })
    }

    /// `self` with `name` appended as the last path segment: a `serve` origin is a base URL
    /// under which each release is found by its signed name.
    pub fn join(&self, name: &str) -> OriginUrl {
        let sep = if self.path.ends_with('/') { "" } else { "/" };
        OriginUrl { path: format!("{}{sep}{name}", self.path), ..self.clone() }
    }

    /// Where a redirect's `Location` points from here: an absolute http:// URL, or a path on
    /// the same server.
    pub fn follow(&self, location: &str) -> Result<OriginUrl, String> {
        if location.starts_with('/') && !location.starts_with("//") {
            return OriginUrl::parse(&format!("http://{}:{}{location}", self.host, self.port));
        }
        OriginUrl::parse(location)
    }
}

impl std::fmt::Display for OriginUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// The request for `len` bytes at `offset` of the file at `url`, on a keep-alive connection.
pub fn range_request(url: &OriginUrl, offset: u64, len: u32, out: &mut Vec<u8>) {
    out.clear();
    let end = offset + len as u64 - 1;
    out.extend_from_slice(
        format!(
            "GET {} HTTP/1.1\r\nHost: {}:{}\r\nRange: bytes={offset}-{end}\r\nUser-Agent: flotilla\r\nAccept-Encoding: identity\r\nConnection: keep-alive\r\n\r\n",
            url.path, url.host, url.port
        )
        .as_bytes(),
    );
}

/// What identifies the version of a file the server sent last: sent back with the next poll.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// The conditional GET of a (small) file at `url`, on a connection closed after the answer.
pub fn manifest_request(url: &OriginUrl, since: &Validators, out: &mut Vec<u8>) {
    out.clear();
    let mut head = format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: flotilla\r\nAccept-Encoding: identity\r\nConnection: close\r\n",
        url.path, url.host, url.port
    );
    if let Some(etag) = &since.etag {
        head.push_str(&format!("If-None-Match: {etag}\r\n"));
    }
    if let Some(at) = &since.last_modified {
        head.push_str(&format!("If-Modified-Since: {at}\r\n"));
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
}

/// What a response head says about a polled file.
#[derive(Debug, PartialEq, Eq)]
pub enum PollAnswer {
    /// `304 Not Modified`: what we have is current.
    NotModified,
    /// `200 OK`: the file follows, exactly `len` bytes; its validators, for the next poll.
    Body { len: usize, validators: Validators },
    /// Go there instead.
    Redirect(String),
    /// Not usable; the reason, one line.
    Refused(String),
}

/// Reads the response head of a poll from `buf`; a body over `max` bytes is refused. As
/// [`read_head`]: `Ok(None)` until the head is whole, then the answer and the head's length.
pub fn read_poll_head(buf: &[u8], max: usize) -> Result<Option<(PollAnswer, usize)>, String> {
    // A validator goes back in a header line: only short printable values are kept.
    let validator = |v: Option<&str>| {
        v.filter(|v| v.len() <= 128 && v.bytes().all(|b| b == b' ' || b.is_ascii_graphic())).map(str::to_owned)
    };
    with_head(buf, |h| match h.code {
        304 => PollAnswer::NotModified,
        200 if h.header("transfer-encoding").is_some_and(|e| !e.eq_ignore_ascii_case("identity")) => {
            PollAnswer::Refused("a chunked or encoded body".into())
        }
        200 => match h.header("content-length").map(str::parse::<usize>) {
            Some(Ok(len)) if len <= max => PollAnswer::Body {
                len,
                validators: Validators {
                    etag: validator(h.header("etag")),
                    last_modified: validator(h.header("last-modified")),
                },
            },
            Some(Ok(len)) => PollAnswer::Refused(format!("a body of {len} bytes, over the {max} a manifest may have")),
            _ => PollAnswer::Refused("200 without a valid Content-Length".into()),
        },
        301 | 302 | 303 | 307 | 308 => match h.header("location") {
            Some(l) => PollAnswer::Redirect(l.to_owned()),
            None => PollAnswer::Refused(format!("{} {} without a Location", h.code, h.reason())),
        },
        _ => PollAnswer::Refused(format!("the server answered {} {}", h.code, h.reason())),
    })
}

/// What a response head says about the range asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The bytes follow, exactly `len` of them; `close`: the server closes after them.
    Body { close: bool },
    /// Go there instead.
    Redirect(String),
    /// Not usable; the reason, one line.
    Refused(String),
}

/// Reads a response head from `buf` for the request of `len` bytes at `offset` of a file of
/// `size` bytes. `Ok(None)`: the head is not complete yet. `Ok(Some((answer, n)))`: the head
/// took `n` bytes of `buf`; what follows is body.
pub fn read_head(buf: &[u8], offset: u64, len: u32, size: u64) -> Result<Option<(Answer, usize)>, String> {
    with_head(buf, |h| match h.code {
        206 => judge_partial(
            h.header("content-range"),
            h.header("content-length"),
            h.header("transfer-encoding"),
            offset,
            len,
            size,
        )
        .map_or_else(Answer::Refused, |()| Answer::Body {
            close: h.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) || h.http_1_0,
        }),
        301 | 302 | 303 | 307 | 308 => match h.header("location") {
            Some(l) => Answer::Redirect(l.trim().to_owned()),
            None => Answer::Refused(format!("{} {} without a Location", h.code, h.reason())),
        },
        200 => Answer::Refused("the server ignored the Range request (200 OK): it cannot be an origin".into()),
        _ => Answer::Refused(format!("the server answered {} {}", h.code, h.reason())),
    })
}

/// A response head, as the judges of [`read_head`] and [`read_poll_head`] see it.
struct Head<'h, 'b> {
    code: u16,
    http_1_0: bool,
    reason: &'b str,
    headers: &'h [httparse::Header<'b>],
}

impl Head<'_, '_> {
    /// The value of header `name` (any case), trimmed, if it is there and UTF-8.
    fn header(&self, name: &str) -> Option<&str> {
        let h = self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))?;
        std::str::from_utf8(h.value).ok().map(str::trim)
    }

    /// The reason phrase without control characters, for a log line.
    fn reason(&self) -> String {
        self.reason.chars().filter(|c| !c.is_control()).collect()
    }
}

/// Parses a response head from `buf` and hands it to `judge`: `Ok(None)` while it is not whole,
/// an error for a malformed head or one over [`MAX_HEAD`], else the judgement and the head's
/// length (what follows is body).
fn with_head<T>(buf: &[u8], judge: impl FnOnce(&Head) -> T) -> Result<Option<(T, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let n = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(format!("response head over {MAX_HEAD} bytes"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response head ({e})")),
    };
    let head = Head {
        code: response.code.unwrap_or(0),
        http_1_0: response.version == Some(0),
        reason: response.reason.unwrap_or(""),
        headers: response.headers,
    };
    Ok(Some((judge(&head), n)))
}

fn judge_partial(
    range: Option<&str>,
    length: Option<&str>,
    encoding: Option<&str>,
    offset: u64,
    len: u32,
    size: u64,
) -> Result<(), String> {
    if encoding.is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
        return Err(format!("a chunked or encoded body ({})", encoding.unwrap_or_default()));
    }
    let end = offset + len as u64 - 1;
    let want = format!("bytes {offset}-{end}/{size}");
    match range.map(str::trim) {
        Some(r) if r == want => {}
        Some(r) => return Err(format!("Content-Range {r:?} where {want:?} was asked (another file or another range)")),
        None => return Err("206 without a Content-Range".into()),
    }
    match length.map(|l| l.trim().parse::<u64>()) {
        None => Ok(()),
        Some(Ok(l)) if l == len as u64 => Ok(()),
        Some(_) => Err(format!("Content-Length {:?} for a range of {len} bytes", length.unwrap_or_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_join_and_follow_redirects() {
        let u = OriginUrl::parse("http://cdn.example:8080/fw/fw.img").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("cdn.example", 8080, "/fw/fw.img"));
        assert_eq!(OriginUrl::parse("http://10.0.0.1").unwrap().to_string(), "http://10.0.0.1:80/");
        assert_eq!(OriginUrl::parse("http://h/releases/").unwrap().join("fw.img").path, "/releases/fw.img");
        assert_eq!(OriginUrl::parse("http://h/releases").unwrap().join("fw.img").path, "/releases/fw.img");
        assert_eq!(u.follow("/other").unwrap().to_string(), "http://cdn.example:8080/other");
        assert_eq!(u.follow("http://mirror:81/x").unwrap().to_string(), "http://mirror:81/x");
        for bad in ["https://h/x", "ftp://h/x", "http://:80/x", "http://h:99999/x", "http://h/a b", "http://h:0/"] {
            assert!(OriginUrl::parse(bad).is_err(), "{bad}");
        }
        let mut req = Vec::new();
        range_request(&u, 262_144, 65_536, &mut req);
        let req = String::from_utf8(req).unwrap();
        assert!(req.starts_with("GET /fw/fw.img HTTP/1.1\r\nHost: cdn.example:8080\r\nRange: bytes=262144-327679\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }

    fn head(text: &str) -> Result<Option<(Answer, usize)>, String> {
        read_head(text.as_bytes(), 100, 50, 1000)
    }

    #[test]
    fn only_the_exact_range_asked_for_is_a_body() {
        let ok = "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100-149/1000\r\nContent-Length: 50\r\n\r\nBODY";
        let (a, n) = head(ok).unwrap().unwrap();
        assert_eq!((a, &ok[n..]), (Answer::Body { close: false }, "BODY"));
        let close = "HTTP/1.1 206 OK\r\nConnection: close\r\nContent-Range: bytes 100-149/1000\r\n\r\n";
        assert_eq!(head(close).unwrap().unwrap().0, Answer::Body { close: true });
        assert_eq!(head("HTTP/1.1 206 Partial").unwrap(), None, "not whole yet");

        let refused = |text: &str, needle: &str| match head(text).unwrap().unwrap().0 {
            Answer::Refused(why) => assert!(why.contains(needle), "{why:?} lacks {needle:?}"),
            other => panic!("{other:?} for {text:?}"),
        };
        refused("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", "ignored the Range");
        refused("HTTP/1.1 404 Not Found\r\n\r\n", "404 Not Found");
        refused("HTTP/1.1 503 Busy\r\n\r\n", "503");
        refused("HTTP/1.1 206 OK\r\nContent-Range: bytes 100-149/999\r\n\r\n", "another file");
        refused("HTTP/1.1 206 OK\r\nContent-Range: bytes 0-49/1000\r\n\r\n", "another range");
        refused("HTTP/1.1 206 OK\r\nContent-Range: bytes 100-149/1000\r\nContent-Length: 51\r\n\r\n", "Content-Length");
        refused("HTTP/1.1 206 OK\r\n\r\n", "without a Content-Range");
        refused(
            "HTTP/1.1 206 OK\r\nContent-Range: bytes 100-149/1000\r\nTransfer-Encoding: chunked\r\n\r\n",
            "chunked",
        );
        refused("HTTP/1.1 302 Found\r\n\r\n", "without a Location");
        assert_eq!(
            head("HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\n\r\n").unwrap().unwrap().0,
            Answer::Redirect("/elsewhere".into())
        );
        assert!(head("NOT HTTP AT ALL\r\n\r\n").is_err());
        let huge = format!("HTTP/1.1 206 OK\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(head(&huge).is_err(), "an endless head is refused, not waited for");
    }

    #[test]
    fn a_poll_is_conditional_and_its_answer_bounded() {
        let u = OriginUrl::parse("http://h:8080/rel/fw.img.flotilla").unwrap();
        let mut req = Vec::new();
        manifest_request(&u, &Validators::default(), &mut req);
        let text = String::from_utf8(req.clone()).unwrap();
        assert!(text.starts_with("GET /rel/fw.img.flotilla HTTP/1.1\r\n") && !text.contains("If-"), "{text}");
        let since =
            Validators { etag: Some("\"5f-1a\"".into()), last_modified: Some("Mon, 07 Dec 2026 10:00:00 GMT".into()) };
        manifest_request(&u, &since, &mut req);
        let text = String::from_utf8(req).unwrap();
        assert!(text.contains("\r\nIf-None-Match: \"5f-1a\"\r\n"), "{text}");
        assert!(text.contains("\r\nIf-Modified-Since: Mon, 07 Dec 2026 10:00:00 GMT\r\n"), "{text}");

        let poll = |t: &str| read_poll_head(t.as_bytes(), 100).unwrap().unwrap().0;
        assert_eq!(poll("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"), PollAnswer::NotModified);
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 40\r\nETag: \"abc\"\r\nLast-Modified: Mon, 07 Dec 2026 10:00:00 GMT\r\n\r\n";
        let (a, n) = read_poll_head(ok.as_bytes(), 100).unwrap().unwrap();
        assert_eq!(n, ok.len());
        assert_eq!(
            a,
            PollAnswer::Body {
                len: 40,
                validators: Validators {
                    etag: Some("\"abc\"".into()),
                    last_modified: Some("Mon, 07 Dec 2026 10:00:00 GMT".into())
                }
            }
        );
        let refused = |t: &str, needle: &str| match poll(t) {
            PollAnswer::Refused(why) => assert!(why.contains(needle), "{why:?} lacks {needle:?}"),
            other => panic!("{other:?} for {t:?}"),
        };
        refused("HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n", "over the 100");
        refused("HTTP/1.1 200 OK\r\n\r\n", "without a valid Content-Length");
        refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "chunked");
        refused("HTTP/1.1 404 Not Found\r\n\r\n", "404");
        assert_eq!(poll("HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n"), PollAnswer::Redirect("/x".into()));
        let long = format!("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nETag: \"{}\"\r\n\r\n", "a".repeat(200));
        assert!(matches!(poll(&long), PollAnswer::Body { validators: Validators { etag: None, .. }, .. }));
    }
}
