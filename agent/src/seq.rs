//! Batch sequence numbers that only grow, across restarts.
//!
//! The allocator reserves numbers in blocks: before handing out a number above the
//! reserved mark it durably writes a new mark (write to a temporary file, fsync,
//! rename). After a crash the agent starts above the last mark, so numbers never
//! repeat; the unused rest of a block is a harmless gap.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Numbers reserved per durable write.
pub const DEFAULT_BLOCK: u64 = 1024;

/// Errors persisting the sequence.
#[derive(Debug, thiserror::Error)]
pub enum SeqError {
    /// The state file could not be read or written.
    #[error("cannot persist the sequence number in {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state file does not hold a number.
    #[error("{path} does not hold a sequence number: {content:?}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What it holds (truncated).
        content: String,
    },
}

/// Hands out growing sequence numbers, durable across restarts.
#[derive(Debug)]
pub struct SeqAllocator {
    path: PathBuf,
    next: u64,
    reserved_up_to: u64,
    block: u64,
}

impl SeqAllocator {
    /// Opens (or creates) the state file `path`.
    pub fn open(path: &Path, block: u64) -> Result<Self, SeqError> {
        let reserved = match std::fs::read_to_string(path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| SeqError::Corrupt {
                path: path.to_path_buf(),
                content: text.chars().take(40).collect(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(SeqError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            next: reserved + 1,
            reserved_up_to: reserved,
            block: block.max(1),
        })
    }

    /// The highest number handed out (or reserved by an earlier run); 0 when new.
    pub fn last(&self) -> u64 {
        self.next - 1
    }

    /// The next number; persists a new reservation when the block is used up.
    pub fn next_seq(&mut self) -> Result<u64, SeqError> {
        if self.next > self.reserved_up_to {
            let mark = self.next + self.block - 1;
            self.persist(mark)?;
            self.reserved_up_to = mark;
        }
        let seq = self.next;
        self.next += 1;
        Ok(seq)
    }

    /// Writes `mark` durably: to a temporary file renamed over the state file or,
    /// when that cannot be done (a full disk has no room for a new file), over the
    /// existing file in place, which needs no new space: the number is written at
    /// a fixed width, well inside one disk sector, so the write is not torn.
    fn persist(&self, mark: u64) -> Result<(), SeqError> {
        let io = |source| SeqError::Io {
            path: self.path.clone(),
            source,
        };
        let Err(e) = self.replace_file(mark) else {
            return Ok(());
        };
        let _ = std::fs::remove_file(self.path.with_extension("tmp"));
        self.overwrite_in_place(mark).map_err(|_| io(e))
    }

    fn replace_file(&self, mark: u64) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{mark:020}")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            // Make the rename itself durable.
            std::fs::File::open(dir).and_then(|d| d.sync_all())?;
        }
        Ok(())
    }

    fn overwrite_in_place(&self, mark: u64) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).open(&self.path)?;
        let text = format!("{mark:020}\n");
        if file.metadata()?.len() != text.len() as u64 {
            // Only a file written by this version has the fixed width.
            return Err(std::io::Error::other("the state file has another width"));
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seq");
        let mut a = SeqAllocator::open(&path, 4).unwrap();
        assert_eq!(a.last(), 0);
        let first: Vec<u64> = (0..6).map(|_| a.next_seq().unwrap()).collect();
        assert_eq!(first, vec![1, 2, 3, 4, 5, 6]);
        drop(a);
        let mut b = SeqAllocator::open(&path, 4).unwrap();
        let n = b.next_seq().unwrap();
        assert!(
            n > 6,
            "after a restart the sequence continues above 6, got {n}"
        );
    }

    #[test]
    fn a_mark_is_written_in_place_when_no_new_file_can_be_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seq");
        let mut a = SeqAllocator::open(&path, 4).unwrap();
        assert_eq!(a.next_seq().unwrap(), 1);
        // A directory where the temporary file would go makes creating it fail,
        // as a full disk does.
        std::fs::create_dir(path.with_extension("tmp")).unwrap();
        let more: Vec<u64> = (0..6).map(|_| a.next_seq().unwrap()).collect();
        assert_eq!(more, vec![2, 3, 4, 5, 6, 7]);
        drop(a);
        let mut b = SeqAllocator::open(&path, 4).unwrap();
        assert!(b.next_seq().unwrap() > 7);
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seq");
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            SeqAllocator::open(&path, 4),
            Err(SeqError::Corrupt { .. })
        ));
    }
}
