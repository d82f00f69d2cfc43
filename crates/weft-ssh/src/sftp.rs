//! The built-in SFTP server: SFTP version 3 (draft-ietf-secsh-filexfer-02,
//! plus the OpenSSH extensions clients rely on) over stdin/stdout, for the
//! helper process `weftd sftp-server`.
//!
//! What it is. The `sftp` subsystem of a session runs this in a process of
//! its own, spawned exactly like a shell: as the target user, privileges
//! dropped before exec, in the user's home directory. Every file operation
//! is therefore decided by the kernel against the user's own uid, gids and
//! umask; nothing here checks paths or permissions itself (`../../etc/shadow`
//! is simply opened as the user). The protocol (packet framing, parsing,
//! replies) is `russh-sftp`; this module maps each request to one or two
//! system calls and each `errno` to an SFTP status code, as OpenSSH's
//! `sftp-server` does (`errno_to_portable`).
//!
//! What it is not. Not a chroot, not a policy: what the user may do is what
//! the user may do in a shell. File names that are not UTF-8 are shown with
//! replacement characters and cannot be opened (`russh-sftp` carries paths as
//! `String`).
//!
//! Bounds. One request at a time; reads are cut to [`MAX_READ`] bytes (a
//! client asks again for the rest); packets over [`MAX_PACKET`] bytes are
//! refused by the framing; at most [`MAX_HANDLES`] open handles.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, Metadata, OpenOptions, ReadDir};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File as Entry, FileAttributes, Handle, Name, OpenFlags, Packet,
    Status, StatusCode, Version,
};
use russh_sftp::server::{Handler, StatusReply};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest packet a client may send (OpenSSH's `SFTP_MAX_MSG_LENGTH`).
pub const MAX_PACKET: u32 = 256 * 1024;
/// Largest read answered at once (fits one reply packet, as OpenSSH's
/// `SFTP_MAX_READ_LENGTH`).
pub const MAX_READ: u32 = MAX_PACKET - 1024;
/// Open file and directory handles per session.
pub const MAX_HANDLES: usize = 512;
/// Directory entries per `SSH_FXP_NAME` reply.
const READDIR_BATCH: usize = 100;

/// Serves SFTP on the process's stdin and stdout until the client closes
/// the stream. Runs with whatever privileges the process has: call it only
/// in the helper process, after the privilege drop.
pub async fn serve_stdio() {
    serve(tokio::io::join(tokio::io::stdin(), tokio::io::stdout())).await;
}

/// Serves SFTP on `stream` until it ends (end of input or a write error).
pub async fn serve<S>(stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    let stream = Tracked {
        inner: stream,
        _done: done,
    };
    let cfg = russh_sftp::server::Config {
        max_client_packet_len: MAX_PACKET,
    };
    russh_sftp::server::run_with_config(stream, FsHandler::new(), cfg).await;
    // `run_with_config` detaches its loop; the stream (and `done`) is
    // dropped when the loop ends.
    let _ = ended.await;
}

/// A stream that signals its end by being dropped.
struct Tracked<S> {
    inner: S,
    _done: tokio::sync::oneshot::Sender<()>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What an open handle refers to.
enum Open {
    File(File),
    Dir {
        path: PathBuf,
        /// `.` and `..` first (as `readdir(3)` lists them), then the rest.
        dots: Vec<&'static str>,
        entries: ReadDir,
    },
}

/// The request handler: plain file-system calls as the process's user.
pub(crate) struct FsHandler {
    handles: BTreeMap<String, Open>,
    next_handle: u64,
    names: Names,
}

impl FsHandler {
    pub(crate) fn new() -> Self {
        FsHandler {
            handles: BTreeMap::new(),
            next_handle: 0,
            names: Names::default(),
        }
    }

    fn insert(&mut self, open: Open) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(StatusCode::Failure.with_message("too many open handles"));
        }
        self.next_handle += 1;
        let h = self.next_handle.to_string();
        self.handles.insert(h.clone(), open);
        Ok(h)
    }

    fn file(&self, handle: &str) -> Result<&File, StatusReply> {
        match self.handles.get(handle) {
            Some(Open::File(f)) => Ok(f),
            _ => Err(bad_handle()),
        }
    }
}

fn bad_handle() -> StatusReply {
    StatusCode::Failure.with_message("invalid handle")
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Success".to_owned(),
        language_tag: "en-US".to_owned(),
    }
}

/// Maps an I/O error to the SFTP status a client shows, as OpenSSH's
/// `errno_to_portable` does, keeping the system's message.
pub(crate) fn status_of(e: &io::Error) -> StatusReply {
    let code = match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR | libc::EBADF | libc::ELOOP) => StatusCode::NoSuchFile,
        Some(libc::EPERM | libc::EACCES | libc::EFAULT) => StatusCode::PermissionDenied,
        Some(libc::ENAMETOOLONG | libc::EINVAL) => StatusCode::BadMessage,
        Some(libc::ENOSYS) => StatusCode::OpUnsupported,
        _ => match e.kind() {
            io::ErrorKind::NotFound => StatusCode::NoSuchFile,
            io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
            _ => StatusCode::Failure,
        },
    };
    let msg = e.to_string();
    // "No such file or directory (os error 2)" -> without the errno suffix.
    let msg = msg.split(" (os error").next().unwrap_or(&msg).to_owned();
    code.with_message(msg)
}

fn io_err(e: io::Error) -> StatusReply {
    status_of(&e)
}

/// Returns `path` as sent, or `.` for the empty path (OpenSSH does the same).
fn local(path: &str) -> &Path {
    if path.is_empty() {
        Path::new(".")
    } else {
        Path::new(path)
    }
}

/// Returns the attributes of `md`, file type bits included.
fn attrs_of(md: &Metadata, names: &mut Names) -> FileAttributes {
    FileAttributes {
        size: Some(md.size()),
        uid: Some(md.uid()),
        user: names.user(md.uid()),
        gid: Some(md.gid()),
        group: names.group(md.gid()),
        permissions: Some(md.mode()),
        atime: Some(u32::try_from(md.atime().max(0)).unwrap_or(u32::MAX)),
        mtime: Some(u32::try_from(md.mtime().max(0)).unwrap_or(u32::MAX)),
    }
}

/// Applies SETSTAT/FSETSTAT attributes in OpenSSH's order: size, mode,
/// times, owner. The first failure is returned.
fn apply_attrs(target: Target<'_>, attrs: &FileAttributes) -> io::Result<()> {
    if let Some(size) = attrs.size {
        match target {
            Target::File(f) => f.set_len(size)?,
            Target::Path(p) => OpenOptions::new().write(true).open(p)?.set_len(size)?,
        }
    }
    if let Some(mode) = attrs.permissions {
        let perms = fs::Permissions::from_mode(mode & 0o7777);
        match target {
            Target::File(f) => f.set_permissions(perms)?,
            Target::Path(p) => fs::set_permissions(p, perms)?,
        }
    }
    if attrs.atime.is_some() || attrs.mtime.is_some() {
        let at = |t: u32| UNIX_EPOCH + Duration::from_secs(u64::from(t));
        let mut times = fs::FileTimes::new();
        if let Some(a) = attrs.atime {
            times = times.set_accessed(at(a));
        }
        if let Some(m) = attrs.mtime {
            times = times.set_modified(at(m));
        }
        match target {
            Target::File(f) => f.set_times(times)?,
            // Opening for writing would need write permission; utimes on a
            // path needs only ownership, as OpenSSH's `utimes(2)`.
            Target::Path(p) => set_path_times(p, attrs.atime, attrs.mtime)?,
        }
    }
    if attrs.uid.is_some() || attrs.gid.is_some() {
        match target {
            Target::File(f) => std::os::unix::fs::fchown(f, attrs.uid, attrs.gid)?,
            Target::Path(p) => std::os::unix::fs::chown(p, attrs.uid, attrs.gid)?,
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Target<'a> {
    File(&'a File),
    Path(&'a Path),
}

fn set_path_times(p: &Path, atime: Option<u32>, mtime: Option<u32>) -> io::Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let spec = |t: Option<u32>| match t {
        Some(t) => TimeSpec::new(i64::from(t), 0),
        None => TimeSpec::UTIME_OMIT,
    };
    utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &spec(atime),
        &spec(mtime),
        UtimensatFlags::FollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Resolves `path` as OpenSSH's `sftp_realpath` does: symlinks and `..`
/// resolved, and a last component that does not exist (yet) kept as is.
fn realpath(path: &Path) -> io::Result<PathBuf> {
    match fs::canonicalize(path) {
        Ok(p) => Ok(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let (Some(parent), Some(Component::Normal(name))) =
                (path.parent(), path.components().next_back())
            else {
                return Err(e);
            };
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok(fs::canonicalize(parent)?.join(name))
        }
        Err(e) => Err(e),
    }
}

/// Expands a leading `~` or `~user` (`expand-path@openssh.com`).
fn expand_tilde(path: &str) -> io::Result<PathBuf> {
    let Some(rest) = path.strip_prefix('~') else {
        return Ok(PathBuf::from(local(path)));
    };
    let (user, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let home = if user.is_empty() {
        nix::unistd::User::from_uid(nix::unistd::getuid())
    } else {
        nix::unistd::User::from_name(user)
    }
    .map_err(io::Error::from)?
    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?
    .dir;
    Ok(if tail.is_empty() {
        home
    } else {
        home.join(tail)
    })
}

/// Cached uid/gid names for directory listings.
#[derive(Default)]
struct Names {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Option<String> {
        if self.users.len() > 4096 {
            self.users.clear();
        }
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }

    fn group(&mut self, gid: u32) -> Option<String> {
        if self.groups.len() > 4096 {
            self.groups.clear();
        }
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }
}

fn one_name(id: u32, path: &Path) -> Name {
    Name {
        id,
        files: vec![Entry::dummy(path.to_string_lossy())],
    }
}

fn decode_two_paths(data: Vec<u8>) -> Result<(String, String), StatusReply> {
    let mut b = Bytes::from(data);
    let p: russh_sftp::extensions::HardlinkExtension =
        russh_sftp::de::from_bytes(&mut b).map_err(|_| StatusReply::new(StatusCode::BadMessage))?;
    Ok((p.oldpath, p.newpath))
}

fn decode_one_path(data: Vec<u8>) -> Result<String, StatusReply> {
    let mut b = Bytes::from(data);
    let p: russh_sftp::extensions::StatvfsExtension =
        russh_sftp::de::from_bytes(&mut b).map_err(|_| StatusReply::new(StatusCode::BadMessage))?;
    Ok(p.path)
}

fn statvfs_reply(id: u32, path: &Path) -> Result<Packet, StatusReply> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|e| io_err(e.into()))?;
    let st = russh_sftp::extensions::Statvfs {
        block_size: s.block_size(),
        fragment_size: s.fragment_size(),
        blocks: s.blocks(),
        blocks_free: s.blocks_free(),
        blocks_avail: s.blocks_available(),
        inodes: s.files(),
        inodes_free: s.files_free(),
        inodes_avail: s.files_available(),
        fs_id: s.filesystem_id(),
        flags: s.flags().bits(),
        name_max: s.name_max(),
    };
    let data = russh_sftp::ser::to_bytes(&st)
        .map_err(|_| StatusReply::new(StatusCode::Failure))?
        .to_vec();
    Ok(Packet::ExtendedReply(ExtendedReply { id, data }))
}

impl Handler for FsHandler {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusReply::new(StatusCode::OpUnsupported)
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        let mut v = Version::new();
        for (name, ver) in [
            ("posix-rename@openssh.com", "1"),
            (russh_sftp::extensions::STATVFS, "2"),
            (russh_sftp::extensions::HARDLINK, "1"),
            (russh_sftp::extensions::FSYNC, "1"),
            (russh_sftp::extensions::EXPAND_PATH, "1"),
        ] {
            v.extensions.insert(name.to_owned(), ver.to_owned());
        }
        Ok(v)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        let mut opts: OpenOptions = pflags.into();
        if !pflags.intersects(OpenFlags::READ | OpenFlags::WRITE | OpenFlags::APPEND) {
            opts.read(true);
        }
        // As OpenSSH: the requested mode (default 0666) minus the umask.
        opts.mode(attrs.permissions.map_or(0o666, |m| m & 0o7777));
        let f = opts.open(local(&filename)).map_err(io_err)?;
        let handle = self.insert(Open::File(f))?;
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            Some(_) => Ok(ok(id)),
            None => Err(bad_handle()),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let f = self.file(&handle)?;
        let mut buf = vec![0; len.min(MAX_READ) as usize];
        let n = loop {
            match f.read_at(&mut buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r.map_err(io_err)?,
            }
        };
        if n == 0 && !buf.is_empty() {
            return Err(StatusReply::new(StatusCode::Eof));
        }
        buf.truncate(n);
        Ok(Data { id, data: buf })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        self.file(&handle)?
            .write_all_at(&data, offset)
            .map_err(io_err)?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let md = fs::symlink_metadata(local(&path)).map_err(io_err)?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&md, &mut self.names),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        let md = fs::metadata(local(&path)).map_err(io_err)?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&md, &mut self.names),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let md = self.file(&handle)?.metadata().map_err(io_err)?;
        Ok(Attrs {
            id,
            attrs: attrs_of(&md, &mut self.names),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        apply_attrs(Target::Path(local(&path)), &attrs).map_err(io_err)?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        apply_attrs(Target::File(self.file(&handle)?), &attrs).map_err(io_err)?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        let path = local(&path).to_path_buf();
        let entries = fs::read_dir(&path).map_err(io_err)?;
        let handle = self.insert(Open::Dir {
            path,
            dots: vec!["..", "."],
            entries,
        })?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let Some(Open::Dir {
            path,
            dots,
            entries,
        }) = self.handles.get_mut(&handle)
        else {
            return Err(bad_handle());
        };
        let mut files = Vec::new();
        while files.len() < READDIR_BATCH {
            let (name, full) = if let Some(d) = dots.pop() {
                (d.to_owned(), path.join(d))
            } else {
                match entries.next() {
                    None => break,
                    // An entry that vanished or cannot be read is skipped, as
                    // OpenSSH skips entries it cannot stat.
                    Some(Err(_)) => continue,
                    Some(Ok(e)) => (e.file_name().to_string_lossy().into_owned(), e.path()),
                }
            };
            let Ok(md) = fs::symlink_metadata(&full) else {
                continue;
            };
            files.push(Entry::new(name, attrs_of(&md, &mut self.names)));
        }
        if files.is_empty() {
            return Err(StatusReply::new(StatusCode::Eof));
        }
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        fs::remove_file(local(&filename)).map_err(io_err)?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let mode = attrs.permissions.map_or(0o777, |m| m & 0o7777);
        fs::DirBuilder::new()
            .mode(mode)
            .create(local(&path))
            .map_err(io_err)?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        fs::remove_dir(local(&path)).map_err(io_err)?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let p = realpath(local(&path)).map_err(io_err)?;
        Ok(one_name(id, &p))
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        // SFTPv3 rename must not replace an existing target (OpenSSH uses
        // link+unlink); `posix-rename@openssh.com` replaces.
        let (old, new) = (local(&oldpath), local(&newpath));
        if fs::symlink_metadata(new).is_ok() {
            return Err(StatusCode::Failure.with_message("target exists"));
        }
        fs::rename(old, new).map_err(io_err)?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        let target = fs::read_link(local(&path)).map_err(io_err)?;
        Ok(one_name(id, &target))
    }

    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        // OpenSSH's client (and server) send the link's target first and the
        // new link second; russh-sftp names them the other way round.
        std::os::unix::fs::symlink(&linkpath, local(&targetpath)).map_err(io_err)?;
        Ok(ok(id))
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        match request.as_str() {
            "posix-rename@openssh.com" => {
                let (old, new) = decode_two_paths(data)?;
                fs::rename(local(&old), local(&new)).map_err(io_err)?;
                Ok(Packet::Status(ok(id)))
            }
            russh_sftp::extensions::HARDLINK => {
                let (old, new) = decode_two_paths(data)?;
                fs::hard_link(local(&old), local(&new)).map_err(io_err)?;
                Ok(Packet::Status(ok(id)))
            }
            russh_sftp::extensions::STATVFS => {
                let path = decode_one_path(data)?;
                statvfs_reply(id, local(&path))
            }
            russh_sftp::extensions::FSYNC => {
                let handle = decode_one_path(data)?;
                self.file(&handle)?.sync_all().map_err(io_err)?;
                Ok(Packet::Status(ok(id)))
            }
            russh_sftp::extensions::EXPAND_PATH => {
                let path = decode_one_path(data)?;
                let p = realpath(&expand_tilde(&path).map_err(io_err)?).map_err(io_err)?;
                Ok(Packet::Name(one_name(id, &p)))
            }
            _ => Err(self.unimplemented()),
        }
    }
}

#[cfg(test)]
#[path = "sftp_tests.rs"]
mod tests;
