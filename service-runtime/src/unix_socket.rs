//! A unix socket a service listens on beside its TCP address, for nginx on the same host.
//!
//! Loopback TCP costs both ends of every request a TCP send and receive path in the kernel; a
//! unix socket is a copy between two buffers. With nginx proxying single events to the gateway
//! on the same two cores, that was 8–19% more of them a second (docs/benchmarks.md, forty-sixth
//! round).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

use crate::config::{ConfigError, Settings};

/// Longest path a unix socket address holds on Linux (`sun_path` is 108 bytes with the NUL).
pub const MAX_PATH_BYTES: usize = 107;

/// The socket path in the variable `name`: unset or blank for none, else an absolute path that
/// fits a unix socket address.
pub fn path_from_settings(
    settings: &Settings<'_>,
    name: &str,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some(text) = settings.raw(name) else {
        return Ok(None);
    };
    let bad = |reason: String| ConfigError {
        name: name.into(),
        value: text.clone(),
        reason,
    };
    if !text.starts_with('/') {
        return Err(bad(
            "must be an absolute path such as /run/warren/gateway.sock".into(),
        ));
    }
    if text.len() > MAX_PATH_BYTES {
        return Err(bad(format!(
            "is {} bytes long; a unix socket path holds at most {MAX_PATH_BYTES}",
            text.len()
        )));
    }
    Ok(Some(PathBuf::from(text)))
}

/// Why a unix socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UnixSocketError {
    /// Another process accepts connections on the path: two services were given the same one.
    #[error("{0} is in use: another process accepts connections on it")]
    InUse(PathBuf),
    /// The path names something other than a socket, which is never removed.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Binding, or making the socket reachable, failed.
    #[error("cannot listen on {path}: {source}")]
    Io {
        /// The socket's path.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

/// A listening unix socket; its path is removed when it is dropped, so a stopped service leaves
/// nothing for nginx to connect to.
#[derive(Debug)]
pub struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixSocket {
    /// Listens on `path`, replacing a socket a stopped process left there but never one that
    /// another process still accepts on, or a file that is not a socket. The socket is made
    /// connectable by every user (mode 0666), as a port on 127.0.0.1 is: nginx's workers often run
    /// as another user than the service. Restrict it with the permissions of its directory.
    /// Must be called within a tokio runtime.
    pub fn bind(path: &Path) -> Result<Self, UnixSocketError> {
        let io_error = |source| UnixSocketError::Io {
            path: path.to_owned(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if !metadata.file_type().is_socket() => {
                return Err(UnixSocketError::NotASocket(path.to_owned()))
            }
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(UnixSocketError::InUse(path.to_owned())),
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).map_err(io_error)?;
                }
                Err(error) => return Err(io_error(error)),
            },
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(error)),
        }
        let listener = UnixListener::bind(path).map_err(io_error)?;
        let socket = Self {
            listener,
            path: path.to_owned(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(io_error)?;
        Ok(socket)
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<UnixStream> {
        self.listener.accept().await.map(|(stream, _)| stream)
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("warren-unix-socket-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_path_setting_is_absolute_and_fits_a_socket_address() {
        let read = |value: &str| {
            let value = value.to_owned();
            let settings = Settings::from_lookup(move |_| Some(value.clone()));
            path_from_settings(&settings, "WARREN_TEST_SOCKET")
        };
        assert_eq!(read("").unwrap(), None);
        assert_eq!(
            read("/run/warren/g.sock").unwrap(),
            Some(PathBuf::from("/run/warren/g.sock"))
        );
        let relative = read("g.sock").unwrap_err();
        assert_eq!(relative.name, "WARREN_TEST_SOCKET");
        assert!(relative.reason.contains("absolute"), "{}", relative.reason);
        let long = format!("/{}", "d".repeat(MAX_PATH_BYTES));
        assert!(read(&long).unwrap_err().reason.contains("at most 107"));
        assert!(read(&long[..MAX_PATH_BYTES]).is_ok());
    }

    #[tokio::test]
    async fn accepts_connections_and_removes_its_path_when_dropped() {
        let dir = scratch("accepts");
        let path = dir.join("s.sock");
        let socket = UnixSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        let mut client = UnixStream::connect(&path).await.unwrap();
        let mut server = socket.accept().await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut read = [0u8; 4];
        server.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"ping");
        drop(socket);
        assert!(!path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn replaces_a_stale_socket_but_not_one_in_use_nor_another_file() {
        let dir = scratch("replaces");
        let path = dir.join("s.sock");
        // A socket file no process accepts on, as a killed service leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let socket = UnixSocket::bind(&path).unwrap();

        let again = UnixSocket::bind(&path).unwrap_err();
        assert!(matches!(again, UnixSocketError::InUse(_)), "{again}");
        drop(socket);

        let file = dir.join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        let error = UnixSocket::bind(&file).unwrap_err();
        assert!(matches!(error, UnixSocketError::NotASocket(_)), "{error}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
