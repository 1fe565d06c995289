//! Procfs and sysfs files that collectors read on every run, kept open.
//!
//! [`ProcFile`] owns one open handle and one buffer for a file the kernel
//! generates on each read (`/proc/stat`, `/proc/meminfo`, `/proc/net/dev`,
//! `/proc/pressure/*`, `/proc/sys/...`, sysfs attributes): every read starts at
//! offset 0 with `pread(2)`, which makes the kernel generate the text afresh, so
//! a run costs two `pread`s instead of `openat` + `statx` + `read`s + `close`
//! and the path lookup. A handle that stops working (the file went away, a
//! removed interface's attribute answers `ENODEV`) is dropped and the file
//! opened again once. [`ProcFiles`] keeps such files by path for sets that
//! change between runs (per interface, per disk, per sensor) and forgets those a
//! run no longer asked for.
//!
//! Only for files whose content is generated when read: a regular file that is
//! replaced by a rename would keep being read through the old handle.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::CollectError;

/// Bytes the buffer starts with; it grows to the largest text read and stays.
const INITIAL_CAPACITY: usize = 4096;

/// True when `e` says the file is not there (callers treat such files as
/// optional: no module, no driver, no such interface).
pub fn is_absent(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

/// True when a read error is the attribute's own answer (a link that is down
/// has no `speed`: `EINVAL`; a sensor switched off answers `EIO` or `ENODATA`),
/// which opening the file again would not change.
fn is_answer(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EIO | libc::ENODATA | libc::EOPNOTSUPP | libc::EAGAIN)
    )
}

/// One procfs or sysfs file read again and again through one handle.
#[derive(Debug)]
pub struct ProcFile {
    /// Where to open it, in order of preference: the first that opens is used.
    candidates: Vec<PathBuf>,
    /// Index in `candidates` of the open file, or of the last one tried.
    current: usize,
    /// The open handle, if any.
    file: Option<File>,
    /// Storage for the text; always initialised up to its length.
    buf: Vec<u8>,
    /// Bytes of `buf` that hold the last text read.
    len: usize,
}

impl ProcFile {
    /// A file at `path`, opened on its first read.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::first_of(vec![path.into()])
    }

    /// The first of `candidates` that opens (e.g. the host's `<proc>/1/net/dev`,
    /// else the agent's own `<proc>/net/dev`), opened on the first read.
    pub fn first_of(mut candidates: Vec<PathBuf>) -> Self {
        candidates.dedup();
        Self {
            candidates,
            current: 0,
            file: None,
            buf: Vec::new(),
            len: 0,
        }
    }

    /// A procfs network file of the host's namespace (`<proc>/1/net/<name>`,
    /// for an agent in a pod with the host's /proc) when it opens, else of the
    /// agent's own (`<proc>/net/<name>`).
    pub fn net(proc_root: &Path, name: &str) -> Self {
        Self::first_of(vec![
            proc_root.join("1/net").join(name),
            proc_root.join("net").join(name),
        ])
    }

    /// The path open now, or the last one tried.
    pub fn path(&self) -> &Path {
        self.candidates
            .get(self.current)
            .map_or(Path::new(""), PathBuf::as_path)
    }

    /// A parse error naming this file.
    pub fn parse_error(&self, reason: impl Into<String>) -> CollectError {
        CollectError::Parse {
            path: self.path().display().to_string(),
            reason: reason.into(),
        }
    }

    /// The file's text now.
    pub fn read(&mut self) -> Result<&str, CollectError> {
        if let Err(source) = self.fill() {
            return Err(CollectError::Read {
                path: self.path().display().to_string(),
                source,
            });
        }
        self.text()
    }

    /// The file's text now; `None` when it is not there.
    pub fn read_optional(&mut self) -> Result<Option<&str>, CollectError> {
        match self.fill() {
            Ok(()) => self.text().map(Some),
            Err(e) if is_absent(&e) => Ok(None),
            Err(source) => Err(CollectError::Read {
                path: self.path().display().to_string(),
                source,
            }),
        }
    }

    /// The file's text now; `None` when it is absent or cannot be read.
    pub fn read_ok(&mut self) -> Option<&str> {
        self.fill().ok()?;
        self.text().ok()
    }

    /// The last text read, checked to be UTF-8.
    fn text(&self) -> Result<&str, CollectError> {
        std::str::from_utf8(&self.buf[..self.len]).map_err(|e| self.parse_error(e.to_string()))
    }

    /// Reads the file into the buffer through the open handle; a handle that
    /// fails (other than with the attribute's own answer) is dropped and the
    /// file opened and read once more.
    fn fill(&mut self) -> io::Result<()> {
        if let Some(file) = &self.file {
            match read_all(file, &mut self.buf) {
                Ok(len) => {
                    self.len = len;
                    return Ok(());
                }
                Err(e) if is_answer(&e) => return Err(e),
                Err(_) => self.file = None,
            }
        }
        self.open_and_read()
    }

    /// Opens and reads the first candidate that can be read and keeps its
    /// handle (also when it answered with an error of its own); the error is
    /// the last candidate's.
    fn open_and_read(&mut self) -> io::Result<()> {
        let mut last = io::Error::from(ErrorKind::NotFound);
        for i in 0..self.candidates.len() {
            self.current = i;
            let file = match File::open(&self.candidates[i]) {
                Ok(f) => f,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match read_all(&file, &mut self.buf) {
                Ok(len) => {
                    self.len = len;
                    self.file = Some(file);
                    return Ok(());
                }
                Err(e) if is_answer(&e) => {
                    self.file = Some(file);
                    return Err(e);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Reads all of `file` from offset 0 into `buf` (grown as needed, never
/// shrunk), returning the length read.
fn read_all(file: &File, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.is_empty() {
        buf.resize(INITIAL_CAPACITY, 0);
    }
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => return Ok(len),
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Files kept open by path, for sets of files that change between runs.
///
/// Each run asks for the files it reads with [`ProcFiles::get`] and then calls
/// [`ProcFiles::sweep`], which closes those not asked for since the last sweep.
#[derive(Debug, Default)]
pub struct ProcFiles {
    /// Files by path, with whether this run asked for them.
    files: HashMap<PathBuf, (ProcFile, bool)>,
}

impl ProcFiles {
    /// The file at `path`, opened on its first read.
    pub fn get(&mut self, path: &Path) -> &mut ProcFile {
        let entry = self
            .files
            .entry(path.to_path_buf())
            .or_insert_with(|| (ProcFile::new(path), false));
        entry.1 = true;
        &mut entry.0
    }

    /// Closes the files not asked for since the last sweep.
    pub fn sweep(&mut self) {
        self.files.retain(|_, (_, used)| std::mem::take(used));
    }

    /// How many files are kept.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when no file is kept.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_uptime_read_again_through_one_handle_changes() {
        let mut f = ProcFile::new("/proc/uptime");
        let uptime = |f: &mut ProcFile| -> f64 {
            let text = f.read().unwrap();
            text.split_whitespace().next().unwrap().parse().unwrap()
        };
        let first = uptime(&mut f);
        std::thread::sleep(std::time::Duration::from_millis(30));
        let second = uptime(&mut f);
        assert!(second > first, "{first} then {second}");
        assert!(f.file.is_some(), "the handle is kept");
    }

    #[test]
    fn a_sysfs_attribute_read_again_through_one_handle_changes() {
        let path = Path::new("/sys/class/net/lo/statistics/tx_packets");
        if !path.exists() {
            eprintln!("skipped: no {}", path.display());
            return;
        }
        let mut f = ProcFile::new(path);
        let first: u64 = f.read().unwrap().trim().parse().unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        for _ in 0..3 {
            socket.send_to(b"x", to).unwrap();
        }
        let second: u64 = f.read().unwrap().trim().parse().unwrap();
        assert!(second >= first + 3, "{first} then {second}");
    }

    #[test]
    fn a_seq_file_larger_than_the_first_buffer_is_read_whole() {
        let mut f = ProcFile::new("/proc/self/maps");
        let text = f.read().unwrap().to_string();
        assert!(text.ends_with('\n'));
        let mut again = ProcFile::new("/proc/stat");
        let stat = again.read().unwrap();
        assert!(stat.starts_with("cpu "), "{stat}");
        assert!(stat.contains("\nbtime "));
        let stat = again.read().unwrap();
        assert!(stat.starts_with("cpu ") && stat.contains("\nbtime "));
        let mut small = ProcFile::new("/proc/sys/fs/file-nr");
        for _ in 0..3 {
            assert_eq!(small.read().unwrap().split_whitespace().count(), 3);
        }
    }

    #[test]
    fn a_rewritten_file_is_read_anew_longer_same_length_and_shorter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "first\n").unwrap();
        let mut f = ProcFile::new(&path);
        assert_eq!(f.read().unwrap(), "first\n");
        std::fs::write(&path, "other\n").unwrap();
        assert_eq!(f.read().unwrap(), "other\n");
        std::fs::write(&path, "x\n").unwrap();
        assert_eq!(f.read().unwrap(), "x\n");
        let long = "y".repeat(3 * INITIAL_CAPACITY + 7);
        std::fs::write(&path, &long).unwrap();
        assert_eq!(f.read().unwrap(), long);
        std::fs::write(&path, "").unwrap();
        assert_eq!(f.read().unwrap(), "");
    }

    #[test]
    fn absent_files_and_bad_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing");
        let mut f = ProcFile::new(&path);
        assert!(f.read_optional().unwrap().is_none());
        let err = f.read().unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        std::fs::write(&path, "now here\n").unwrap();
        assert_eq!(f.read_optional().unwrap(), Some("now here\n"));
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let err = f.read().unwrap_err();
        assert!(matches!(err, CollectError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn the_first_candidate_that_opens_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let (host, own) = (dir.path().join("host"), dir.path().join("own"));
        std::fs::write(&own, "own\n").unwrap();
        let mut f = ProcFile::first_of(vec![host.clone(), own.clone()]);
        assert_eq!(f.read().unwrap(), "own\n");
        assert_eq!(f.path(), own);
        let mut both = ProcFile::first_of(vec![own.clone(), host]);
        assert_eq!(both.read().unwrap(), "own\n");
        assert_eq!(both.path(), own);
    }

    #[test]
    fn a_handle_that_fails_is_reopened_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "one\n").unwrap();
        let mut f = ProcFile::new(&path);
        assert_eq!(f.read().unwrap(), "one\n");
        // A handle that cannot read (opened write-only) stands for one gone bad.
        f.file = Some(File::options().write(true).open(&path).unwrap());
        assert_eq!(f.read().unwrap(), "one\n");
        std::fs::remove_file(&path).unwrap();
        f.file = Some(File::options().write(true).open("/dev/null").unwrap());
        let err = f.read().unwrap_err();
        assert!(err.to_string().contains("value"), "{err}");
        assert!(f.file.is_none());
    }

    #[test]
    fn file_sets_forget_what_a_run_did_not_ask_for() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        let mut set = ProcFiles::default();
        assert_eq!(set.get(&a).read().unwrap(), "a");
        assert_eq!(set.get(&b).read().unwrap(), "b");
        set.sweep();
        assert_eq!(set.len(), 2);
        assert_eq!(set.get(&a).read().unwrap(), "a");
        set.sweep();
        assert_eq!(set.len(), 1);
        set.sweep();
        assert!(set.is_empty());
    }
}
