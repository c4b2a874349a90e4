//! Files, directories and sockets only root may use. The state directory is
//! on `/run`, shared with containerd and every other pod: a sandbox directory
//! is 0700, its files 0600, whatever the umask, and a socket the shim serves
//! is 0600 before it listens (whoever connects to the agent's or the
//! management socket controls the guest).

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of private directories.
pub const DIR_MODE: u32 = 0o700;
/// Mode of private files and sockets.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents as 0700; `dir` itself is made 0700
/// also when it existed.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
}

/// Creates (or truncates) a 0600 file for writing.
pub fn create_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    // An existing file keeps its mode through open; the umask may have taken bits.
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// Writes `bytes` to a 0600 file.
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    create_file(path)?.write_all(bytes)
}

/// Makes an existing file or socket 0600 (one a helper process created).
pub fn restrict(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE))
}

/// A unix socket at `path` (a stale one is replaced) that is 0600 before it
/// accepts connections: bound, chmod-ed, then listening.
pub fn bind_listener(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    restrict(path)?;
    socket::listen(&fd, Backlog::new(128)?)?;
    Ok(std::os::unix::net::UnixListener::from(fd))
}

/// [`bind_listener`] for tokio.
pub fn bind_tokio_listener(path: &Path) -> io::Result<tokio::net::UnixListener> {
    let listener = bind_listener(path)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// The permission bits of `path` (no symlink followed).
pub fn mode_of(path: &Path) -> io::Result<u32> {
    Ok(std::fs::symlink_metadata(path)?.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` with a permissive umask, as a shim started from a shell with 022 or 000 would.
    /// The umask is per process: tests that change it take turns.
    fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
        static UMASK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = UMASK.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: umask only swaps the process's mask; it is restored right after.
        let old = unsafe { libc::umask(mask) };
        let out = f();
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        out
    }

    #[test]
    fn directories_are_0700_and_files_0600_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/ns/pod");
        with_umask(0, || create_dir(&dir)).unwrap();
        for d in [
            tmp.path().join("state"),
            tmp.path().join("state/ns"),
            dir.clone(),
        ] {
            assert_eq!(mode_of(&d).unwrap(), 0o700, "{}", d.display());
        }
        // An existing directory with a wide mode is narrowed.
        std::fs::set_permissions(&dir, Permissions::from_mode(0o777)).unwrap();
        create_dir(&dir).unwrap();
        assert_eq!(mode_of(&dir).unwrap(), 0o700);

        let file = dir.join("state.json");
        with_umask(0, || write_file(&file, b"{}")).unwrap();
        assert_eq!(mode_of(&file).unwrap(), 0o600);
        std::fs::set_permissions(&file, Permissions::from_mode(0o666)).unwrap();
        with_umask(0, || create_file(&file)).unwrap();
        assert_eq!(
            mode_of(&file).unwrap(),
            0o600,
            "an existing file is narrowed"
        );
    }

    #[test]
    fn a_listener_is_0600_and_serves() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.sock");
        std::fs::write(&path, b"stale").unwrap();
        let listener = with_umask(0, || bind_listener(&path)).unwrap();
        assert_eq!(mode_of(&path).unwrap(), 0o600);
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        listener.accept().unwrap();
    }
}
