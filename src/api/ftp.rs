//! Files over FTP (`libunftp`): a storage back end over the same files as `/v1/files`, so a
//! file stored over FTP is read over HTTP and the other way round. Folders are path
//! prefixes: a folder exists while a file is in it, or once made with MKD (a marker row).
//! RETR and STOR honour REST offsets (a resumed upload keeps the stored file's first bytes
//! and publishes only if that file did not change meanwhile); APPE appends the same way.
//! Anonymous: authentication comes with the deployment issue's users.

use crate::error::{sqlstate, Error};
use crate::sql::files::{self, Condition, Entry, File, Upload};
use crate::sql::Engine;
use async_trait::async_trait;
use futures::StreamExt;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use unftp_core::auth::DefaultUser;
use unftp_core::storage::{
    Error as FtpError, ErrorKind, Fileinfo, Metadata, StorageBackend, FEATURE_RESTART,
};

/// Serve FTP on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, passive_ports: RangeInclusive<u16>, engine: Arc<Engine>) {
    let built = libunftp::ServerBuilder::new(Box::new(move || CairnFiles {
        engine: engine.clone(),
    }))
    .greeting("Cairn FTP: the cluster's files")
    .passive_ports(passive_ports)
    .idle_session_timeout(crate::limits::FTP_IDLE_SESSION.as_secs())
    .build();
    match built {
        Ok(server) => {
            if let Err(e) = server.listen(addr.to_string()).await {
                tracing::error!(%addr, error = %e, "the FTP server stopped");
            }
        }
        Err(e) => tracing::error!(%addr, error = %e, "the FTP server could not start"),
    }
}

/// The storage back end: every call goes through `sql::files` on this node.
#[derive(Clone)]
pub struct CairnFiles {
    engine: Arc<Engine>,
}

impl Debug for CairnFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CairnFiles")
    }
}

/// What LIST, SIZE and MDTM show of a path.
#[derive(Debug, Clone)]
pub struct Meta {
    len: u64,
    dir: bool,
    modified: SystemTime,
}

impl Meta {
    fn folder() -> Meta {
        Meta {
            len: 0,
            dir: true,
            modified: SystemTime::UNIX_EPOCH,
        }
    }

    fn file(f: &File) -> Meta {
        Meta {
            len: f.size,
            dir: false,
            modified: SystemTime::UNIX_EPOCH + Duration::from_micros(f.modified_us.max(0) as u64),
        }
    }
}

impl Metadata for Meta {
    fn len(&self) -> u64 {
        self.len
    }
    fn is_dir(&self) -> bool {
        self.dir
    }
    fn is_file(&self) -> bool {
        !self.dir
    }
    fn is_symlink(&self) -> bool {
        false
    }
    fn modified(&self) -> unftp_core::storage::Result<SystemTime> {
        Ok(self.modified)
    }
    fn gid(&self) -> u32 {
        0
    }
    fn uid(&self) -> u32 {
        0
    }
}

/// A Cairn error as the FTP reply it should give.
fn ftp_error(e: Error) -> FtpError {
    let kind = match &e {
        Error::Sql { code, .. } => match *code {
            sqlstate::UNDEFINED_FILE => ErrorKind::PermanentFileNotAvailable,
            sqlstate::INVALID_PARAMETER_VALUE => ErrorKind::FileNameNotAllowedError,
            sqlstate::PROGRAM_LIMIT_EXCEEDED => ErrorKind::ExceededStorageAllocationError,
            sqlstate::DEPENDENT_OBJECTS_STILL_EXIST => ErrorKind::PermanentDirectoryNotEmpty,
            sqlstate::DUPLICATE_OBJECT | sqlstate::OBJECT_IN_USE => ErrorKind::PermissionDenied,
            // The file changed under a resumed upload: try again.
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE => ErrorKind::TransientFileNotAvailable,
            _ => ErrorKind::LocalError,
        },
        Error::Retry(_) | Error::NotLeader { .. } | Error::Unavailable(_) => {
            ErrorKind::TransientFileNotAvailable
        }
        _ => ErrorKind::LocalError,
    };
    FtpError::new(kind, e.to_string())
}

/// A path from the client as UTF-8 text (FTP paths are bytes; Cairn's are UTF-8).
fn text(path: &Path) -> Result<&str, FtpError> {
    path.to_str().ok_or_else(|| {
        FtpError::new(
            ErrorKind::FileNameNotAllowedError,
            "file paths are UTF-8".to_string(),
        )
    })
}

fn is_root(path: &str) -> bool {
    path.trim_matches('/').is_empty()
}

#[async_trait]
impl StorageBackend<DefaultUser> for CairnFiles {
    type Metadata = Meta;

    fn name(&self) -> &str {
        "cairn"
    }

    fn supported_features(&self) -> u32 {
        FEATURE_RESTART
    }

    async fn metadata<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> unftp_core::storage::Result<Meta> {
        let path = text(path.as_ref())?;
        if is_root(path) {
            return Ok(Meta::folder());
        }
        if let Some(f) = files::current(&self.engine, path, None)
            .await
            .map_err(ftp_error)?
        {
            return Ok(Meta::file(&f));
        }
        if files::is_folder(&self.engine, path)
            .await
            .map_err(ftp_error)?
        {
            return Ok(Meta::folder());
        }
        Err(ErrorKind::PermanentFileNotAvailable.into())
    }

    async fn list<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> unftp_core::storage::Result<Vec<Fileinfo<PathBuf, Meta>>> {
        let path = text(path.as_ref())?;
        if !is_root(path)
            && !files::is_folder(&self.engine, path)
                .await
                .map_err(ftp_error)?
        {
            // LIST of a file lists the file.
            return match files::current(&self.engine, path, None)
                .await
                .map_err(ftp_error)?
            {
                Some(f) => Ok(vec![Fileinfo {
                    path: PathBuf::from(base_name(&f.path)),
                    metadata: Meta::file(&f),
                }]),
                None => Err(ErrorKind::PermanentDirectoryNotAvailable.into()),
            };
        }
        let entries = files::children(&self.engine, path)
            .await
            .map_err(ftp_error)?;
        Ok(entries
            .into_iter()
            .map(|e| match e {
                Entry::File(f) => Fileinfo {
                    path: PathBuf::from(base_name(&f.path)),
                    metadata: Meta::file(&f),
                },
                Entry::Folder(p) => Fileinfo {
                    path: PathBuf::from(base_name(p.trim_end_matches('/'))),
                    metadata: Meta::folder(),
                },
            })
            .collect())
    }

    async fn get<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
        start_pos: u64,
    ) -> unftp_core::storage::Result<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        let path = text(path.as_ref())?;
        let file = files::current(&self.engine, path, None)
            .await
            .map_err(ftp_error)?
            .ok_or(ErrorKind::PermanentFileNotAvailable)?;
        if start_pos > file.size {
            return Err(FtpError::new(
                ErrorKind::PermanentFileNotAvailable,
                format!("REST {start_pos} is past the end ({} bytes)", file.size),
            ));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(crate::limits::FILE_READ_AHEAD);
        let end = file.size;
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let mut pieces = std::pin::pin!(files::read_range(engine, file, start_pos, end));
            while let Some(piece) = pieces.next().await {
                let piece = piece.map_err(|e| std::io::Error::other(e.to_string()));
                let failed = piece.is_err();
                if tx.send(piece).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Box::new(ChunkReader {
            rx,
            current: bytes::Bytes::new(),
        }))
    }

    async fn put<P: AsRef<Path> + Send + Debug, R: AsyncRead + Send + Sync + Unpin + 'static>(
        &self,
        _user: &DefaultUser,
        mut input: R,
        path: P,
        start_pos: u64,
    ) -> unftp_core::storage::Result<u64> {
        let path = text(path.as_ref())?.to_string();
        let kept = if start_pos > 0 {
            let file = files::current(&self.engine, &path, None)
                .await
                .map_err(ftp_error)?
                .ok_or_else(|| {
                    FtpError::new(
                        ErrorKind::PermanentFileNotAvailable,
                        format!("REST {start_pos}: there is no file to resume"),
                    )
                })?;
            Some(file)
        } else {
            None
        };
        // Publish only over the file whose first bytes were kept.
        let condition = match &kept {
            Some(f) => Condition::Sha256(f.sha256.clone()),
            None => Condition::Any,
        };
        let mut upload = Upload::begin(&self.engine, &path, guess_type(&path), &Condition::Any)
            .await
            .map_err(ftp_error)?;
        if let Some(f) = &kept {
            upload.copy_from(f, start_pos).await.map_err(ftp_error)?;
        }
        let mut buffer = vec![0u8; 64 * 1024];
        let mut received = 0u64;
        loop {
            let n = input
                .read(&mut buffer)
                .await
                .map_err(|e| FtpError::new(ErrorKind::ConnectionClosed, e.to_string()))?;
            if n == 0 {
                break;
            }
            received += n as u64;
            upload.write(&buffer[..n]).await.map_err(ftp_error)?;
        }
        // Every byte is in: publish it in a task of its own, so that a client leaving now
        // cannot drop the publishing transaction half-way.
        publish_detached(upload, condition)
            .await
            .map_err(|e| FtpError::new(ErrorKind::LocalError, e.to_string()))?
            .map_err(ftp_error)?;
        Ok(received)
    }

    async fn del<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> unftp_core::storage::Result<()> {
        let path = text(path.as_ref())?;
        match files::delete(&self.engine, path, &Condition::Any).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ErrorKind::PermanentFileNotAvailable.into()),
            Err(e) => Err(ftp_error(e)),
        }
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> unftp_core::storage::Result<()> {
        let path = text(path.as_ref())?;
        files::make_folder(&self.engine, path)
            .await
            .map_err(ftp_error)
    }

    async fn rename<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        from: P,
        to: P,
    ) -> unftp_core::storage::Result<()> {
        let (from, to) = (text(from.as_ref())?, text(to.as_ref())?);
        match files::rename(&self.engine, from, to, &Condition::Any, &Condition::Any).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == sqlstate::UNDEFINED_FILE => {
                if files::is_folder(&self.engine, from).await.unwrap_or(false) {
                    Err(FtpError::new(
                        ErrorKind::CommandNotImplemented,
                        "renaming a folder is not supported; rename its files".to_string(),
                    ))
                } else {
                    Err(ftp_error(e))
                }
            }
            Err(e) => Err(ftp_error(e)),
        }
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> unftp_core::storage::Result<()> {
        let path = text(path.as_ref())?;
        files::remove_folder(&self.engine, path)
            .await
            .map_err(|e| match e.code() {
                sqlstate::UNDEFINED_FILE => ErrorKind::PermanentDirectoryNotAvailable.into(),
                _ => ftp_error(e),
            })
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(
        &self,
        _user: &DefaultUser,
        path: P,
    ) -> unftp_core::storage::Result<()> {
        let path = text(path.as_ref())?;
        match files::is_folder(&self.engine, path).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ErrorKind::PermanentDirectoryNotAvailable.into()),
            Err(e) => Err(ftp_error(e)),
        }
    }
}

fn publish_detached(
    upload: Upload,
    condition: Condition,
) -> tokio::task::JoinHandle<crate::error::Result<File>> {
    tokio::spawn(async move { upload.finish(&condition).await })
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A Content-Type for a file stored over FTP, from its extension (HTTP readers get it).
fn guess_type(path: &str) -> Option<String> {
    let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
    let t = match ext.as_str() {
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "mp4" => "video/mp4",
        _ => return None,
    };
    Some(t.to_string())
}

/// The bytes a download task sends, as the reader libunftp copies to the data connection.
/// An error from the task reaches the reader (the transfer fails), never a silent end.
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.current.is_empty() {
                let n = buf.remaining().min(self.current.len());
                let piece = self.current.split_to(n);
                buf.put_slice(&piece);
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) => self.current = b,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
