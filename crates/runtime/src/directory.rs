//! Loading the directory file.

use std::path::{Path, PathBuf};

use nwd_proto::directory::{Directory, DirectoryError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read directory file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("directory file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("directory file {path} is inconsistent: {source}")]
    Invalid {
        path: PathBuf,
        source: DirectoryError,
    },
}

/// Reads, parses and validates a TOML directory.
pub fn load(path: &Path) -> Result<Directory, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let dir: Directory = toml::from_str(&text).map_err(|source| LoadError::Parse {
        path: path.to_owned(),
        source,
    })?;
    dir.validate().map_err(|source| LoadError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    Ok(dir)
}

/// The demo directory shipped in `deploy/local/demo/`, for tests and local runs.
pub fn demo_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/demo/directory.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_directory_loads() {
        let dir = load(&demo_path()).unwrap();
        assert!(dir.partners.len() >= 2);
        assert!(dir.staff.len() >= 5);
        assert!(
            dir.patients
                .iter()
                .any(|p| p.trusted_contacts.iter().any(|t| t.consent.is_some()))
        );
        assert!(
            dir.patients
                .iter()
                .any(|p| p.trusted_contacts.iter().any(|t| t.consent.is_none()))
        );
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = load(Path::new("/nonexistent/dir.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/dir.toml"));
    }
}
