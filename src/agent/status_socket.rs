//! The Unix status socket: each connection gets one [`report`] and its JSON (after a NUL) in
//! one write and is closed.
//! The report's format is `status.rs`'s; this is only the socket.

use super::status::report;
use super::{Agent, AgentError, STATUS};
use mio::net::UnixListener;
use mio::Interest;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Status queries answered per wakeup; the rest wait for the next turn.
const MAX_STATUS_PER_TURN: usize = 4;

/// The status socket; its file is removed when the agent goes.
pub(crate) struct StatusSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for StatusSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Agent {
    pub(super) fn open_status(&mut self) -> Result<(), AgentError> {
        let Some(path) = self.config.status.as_ref().filter(|_| self.status.is_none()) else { return Ok(()) };
        let mode = self.config.status_mode;
        let mut listener = bind_status(path, mode).map_err(|e| AgentError::Status(path.clone(), e))?;
        self.poll.registry().register(&mut listener, STATUS, Interest::READABLE).map_err(AgentError::Poll)?;
        log::info!("status on {}", path.display());
        self.status = Some(StatusSocket { listener, path: path.clone() });
        Ok(())
    }

    /// Answers a few status queries: each gets the report in one write and is closed.
    pub(super) fn answer_status(&mut self, now: Instant) {
        for _ in 0..MAX_STATUS_PER_TURN {
            let Some(status) = self.status.as_ref() else { return };
            let mut stream = match status.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return log::warn!("status socket: accept failed: {e}"),
            };
            // The report is a few hundred bytes a release; a reader that cannot take it at once
            // gets what fitted rather than a buffer kept for it.
            // The text, then a NUL and the same facts as JSON: `status` prints one or the other.
            let snapshot = self.snapshot(now);
            let report = format!("{}\0{}", report(&snapshot), super::metrics::json(&snapshot));
            match stream.write(report.as_bytes()) {
                Ok(n) if n == report.len() => {}
                Ok(n) => log::debug!("status socket: report cut at {n} of {} bytes", report.len()),
                Err(e) => log::debug!("status socket: {e}"),
            }
        }
        // Readiness is edge-triggered and we stopped before draining the queue: re-arming makes
        // the next poll report the socket again if queries are still waiting.
        if let Some(s) = self.status.as_mut() {
            if let Err(e) = self.poll.registry().reregister(&mut s.listener, STATUS, Interest::READABLE) {
                log::warn!("status socket: cannot re-arm: {e}");
            }
        }
    }
}

/// Binds the status socket at `path` with permissions `mode` (who may ask: the report names
/// peers and paths). A socket file left there by an agent of ours that is gone is replaced; a
/// live agent's socket, another user's, or anything that is not a socket, is left alone.
fn bind_status(path: &Path, mode: u32) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::other("a file that is not a socket is there; remove it or choose another path"))
        }
        // SAFETY: geteuid has no preconditions.
        Ok(meta) if meta.uid() != unsafe { libc::geteuid() } => {
            return Err(io::Error::other(format!("a socket of user {} is there; refusing to replace it", meta.uid())))
        }
        // A non-blocking connect: refused at once when nobody listens, never waits.
        Ok(_) => match mio::net::UnixStream::connect(path) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)?,
            Ok(_) => return Err(io::Error::other("another agent is listening on it")),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::other("another agent is listening on it"))
            }
            Err(e) => return Err(e),
        },
    }
    // The socket is created under a umask that leaves it ours alone; one thread, so setting
    // the process's umask for the call races with nothing. Then it gets the mode asked for.
    // SAFETY: umask has no preconditions and cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}
