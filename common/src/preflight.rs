//! What a process needs from its machine before it starts: files that must load
//! (certificates, keys, token files) and directories it must be able to write.
//!
//! Configuration validation (`validate` in each binary's config) checks values
//! alone; these checks read the files the values name, so that `validate` (and
//! start-up, which runs the same checks) names every missing or unusable file at
//! once instead of failing on the first one later. Nothing here writes.

use std::path::Path;

use nix::unistd::{AccessFlags, access};

use crate::config::Problems;
use crate::tls::{TlsFiles, TlsMaterial};

/// The three files of a TLS endpoint load and hold what they should (a CA, a
/// certificate chain, a private key); problems go to `field.ca`, `field.cert` or
/// `field.key` when one file is unreadable, to `field` otherwise.
pub fn tls_files(p: &mut Problems, field: &str, files: &TlsFiles) {
    let mut readable = true;
    for (name, path) in [
        ("ca", &files.ca),
        ("cert", &files.cert),
        ("key", &files.key),
    ] {
        if let Err(problem) = readable_file(path) {
            p.push(format!("{field}.{name}"), problem);
            readable = false;
        }
    }
    if readable && let Err(e) = TlsMaterial::load(files) {
        p.push(field, e.to_string());
    }
}

/// `path` is a regular file this process can read.
pub fn file(p: &mut Problems, field: &str, path: &Path) {
    if let Err(problem) = readable_file(path) {
        p.push(field, problem);
    }
}

/// This process can write `dir`, or create it: when it does not exist yet, its
/// nearest existing ancestor must be a writable directory.
pub fn writable_dir(p: &mut Problems, field: &str, dir: &Path) {
    if let Err(problem) = can_write_dir(dir) {
        p.push(field, problem);
    }
}

/// This process can read and write `path` if it exists, or create it in its
/// directory (see [`writable_dir`]) if it does not.
pub fn writable_file(p: &mut Problems, field: &str, path: &Path) {
    let problem = if path.exists() {
        readable_file(path).and_then(|()| {
            access(path, AccessFlags::W_OK)
                .map_err(|e| format!("{}: cannot write: {e}", path.display()))
        })
    } else {
        can_write_dir(path.parent().unwrap_or(Path::new("")))
    };
    if let Err(problem) = problem {
        p.push(field, problem);
    }
}

fn readable_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    access(path, AccessFlags::R_OK).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

fn can_write_dir(dir: &Path) -> Result<(), String> {
    let mut existing = dir;
    loop {
        match std::fs::metadata(existing) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => return Err(format!("{} is not a directory", existing.display())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                existing = match existing.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => parent,
                    _ => Path::new("."),
                };
            }
            Err(e) => return Err(format!("{}: {e}", existing.display())),
        }
    }
    access(existing, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        if existing == dir {
            format!("{}: cannot write: {e}", dir.display())
        } else {
            format!(
                "{} does not exist and cannot be created: {}: {e}",
                dir.display(),
                existing.display()
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::DevPki;

    fn fields(p: Problems) -> Vec<String> {
        match p.finish() {
            Ok(()) => Vec::new(),
            Err(e) => {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.field, e.problem))
                    .collect()
            }
        }
    }

    #[test]
    fn tls_files_name_the_missing_file_and_a_swapped_one() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::new(dir.path());
        let ca = pki.ensure_ca().unwrap();
        pki.ensure_server(&ca, &[]).unwrap();
        let files = pki.tls_files("server");
        let mut p = Problems::default();
        tls_files(&mut p, "grpc.tls", &files);
        assert!(fields(p).is_empty());

        let missing = TlsFiles {
            cert: dir.path().join("nope.pem"),
            ..files.clone()
        };
        let mut p = Problems::default();
        tls_files(&mut p, "grpc.tls", &missing);
        let found = fields(p);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("grpc.tls.cert: "), "{found:?}");
        assert!(found[0].contains("nope.pem"), "{found:?}");

        let swapped = TlsFiles {
            key: files.cert.clone(),
            ..files
        };
        let mut p = Problems::default();
        tls_files(&mut p, "grpc.tls", &swapped);
        let found = fields(p);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("grpc.tls: "), "{found:?}");
    }

    #[test]
    fn a_directory_is_writable_or_can_be_created_under_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Problems::default();
        writable_dir(&mut p, "state_dir", dir.path());
        writable_dir(&mut p, "state_dir", &dir.path().join("a/b/c"));
        assert!(fields(p).is_empty());

        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let mut p = Problems::default();
        writable_dir(&mut p, "state_dir", &file.join("sub"));
        let found = fields(p);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("is not a directory"), "{found:?}");

        let mut p = Problems::default();
        writable_file(&mut p, "storage.url", &file);
        writable_file(&mut p, "storage.url", &dir.path().join("new/iw.db"));
        writable_file(&mut p, "storage.url", Path::new("iw.db"));
        assert!(fields(p).is_empty());
        let mut p = Problems::default();
        writable_file(&mut p, "storage.url", &file.join("iw.db"));
        assert!(fields(p)[0].contains("is not a directory"));

        let mut p = Problems::default();
        super::file(&mut p, "token_file", &dir.path().join("missing"));
        super::file(&mut p, "token_file", dir.path());
        let found = fields(p);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[1].contains("is not a file"), "{found:?}");
    }
}
