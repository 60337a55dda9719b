//! Named corpora: fetched from a local mirror or their public source, always checksum-verified.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::DataError;

/// A corpus perplex knows by name.
#[derive(Debug, Clone, Copy)]
pub struct KnownCorpus {
    /// The name used in config (`data.corpus`) and on the command line.
    pub name: &'static str,
    /// File name inside `DATA_DIR/NAME/`.
    pub file: &'static str,
    /// Public source.
    pub url: &'static str,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: &'static str,
}

/// Tiny Shakespeare (Karpathy's char-rnn), 1,115,394 bytes: the default corpus.
pub const TINY_SHAKESPEARE: KnownCorpus = KnownCorpus {
    name: "tinyshakespeare",
    file: "input.txt",
    url:
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    bytes: 1_115_394,
    sha256: "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
};

/// Every named corpus.
pub const KNOWN_CORPORA: &[KnownCorpus] = &[TINY_SHAKESPEARE];

/// Environment variable naming a local mirror directory laid out as `MIRROR/NAME/FILE`.
pub const MIRROR_ENV: &str = "PERPLEX_DATA_MIRROR";

impl KnownCorpus {
    /// Looks a corpus up by name.
    pub fn by_name(name: &str) -> Result<Self, DataError> {
        KNOWN_CORPORA
            .iter()
            .find(|c| c.name == name)
            .copied()
            .ok_or_else(|| DataError::UnknownCorpus {
                name: name.to_string(),
                known: KNOWN_CORPORA
                    .iter()
                    .map(|c| c.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Where the corpus lives under `data_dir`.
    pub fn path_in(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.name).join(self.file)
    }
}

/// Makes sure corpus `name` is in `data_dir` and returns its path.
///
/// A file already there is kept if its checksum matches. Otherwise the file is copied from
/// `$PERPLEX_DATA_MIRROR/NAME/FILE` when that variable is set, else downloaded from the corpus's
/// public source. The SHA-256 is verified before the file is moved into place, so a failed fetch
/// never leaves a partial file behind.
///
/// # Errors
/// [`DataError::UnknownCorpus`], [`DataError::Download`], [`DataError::Checksum`],
/// [`DataError::Io`].
pub fn fetch_corpus(name: &str, data_dir: &Path) -> Result<PathBuf, DataError> {
    let corpus = KnownCorpus::by_name(name)?;
    let dest = corpus.path_in(data_dir);
    if dest.exists() && sha256_file(&dest)? == corpus.sha256 {
        return Ok(dest);
    }
    let (bytes, origin) = match std::env::var_os(MIRROR_ENV) {
        Some(mirror) => {
            let src = PathBuf::from(mirror).join(corpus.name).join(corpus.file);
            let bytes = read_file(&src)?;
            (bytes, src.display().to_string())
        }
        None => (download(corpus.url)?, corpus.url.to_string()),
    };
    let actual = hex(&Sha256::digest(&bytes));
    if actual != corpus.sha256 {
        return Err(DataError::Checksum {
            path: PathBuf::from(origin),
            expected: corpus.sha256.to_string(),
            actual,
        });
    }
    write_atomically(&dest, &bytes)?;
    tracing::info!(corpus = name, from = %origin, to = %dest.display(), "fetched corpus");
    Ok(dest)
}

fn download(url: &str) -> Result<Vec<u8>, DataError> {
    let err = |message: String| DataError::Download {
        url: url.to_string(),
        message,
    };
    let response = ureq::get(url).call().map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(1 << 30)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    Ok(bytes)
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::NotFound {
            path: path.to_path_buf(),
        },
        _ => DataError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, DataError> {
    Ok(hex(&Sha256::digest(read_file(path)?)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// readers never see a half-written file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    readable_by_all(tmp.as_file()).map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Gives a temporary file (created 0600) the mode of a file written with `File::create` under
/// the usual umask, 0644, before it is renamed into place.
pub(crate) fn readable_by_all(file: &std::fs::File) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}
