//! Where a bundle's files come from. The engine asks for files by name (`manifest.json`, then
//! each shard the manifest lists) and never opens a path itself: a folder on native
//! ([`DirSource`]), bytes the caller already holds ([`BytesSource`]), the web page's `fetch`.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// A bundle's files, by name.
#[allow(async_fn_in_trait)]
pub trait ShardSource {
    /// The whole file `name` (a name inside the bundle, e.g. `manifest.json`).
    async fn read(&self, name: &str) -> Result<Vec<u8>>;

    /// How the source is called in messages (a folder's path, a URL).
    fn describe(&self) -> String;
}

/// Files held in memory.
#[derive(Clone, Debug, Default)]
pub struct BytesSource {
    name: String,
    files: HashMap<String, Vec<u8>>,
}

impl BytesSource {
    /// An empty source called `name` in messages.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            files: HashMap::new(),
        }
    }

    /// Adds (or replaces) a file.
    pub fn insert(&mut self, file: impl Into<String>, bytes: Vec<u8>) {
        self.files.insert(file.into(), bytes);
    }
}

impl ShardSource for BytesSource {
    async fn read(&self, name: &str) -> Result<Vec<u8>> {
        self.files.get(name).cloned().ok_or_else(|| Error::Source {
            file: format!("{}/{name}", self.name),
            reason: "no such file".into(),
        })
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// A bundle folder on the local file system (native builds only).
#[cfg(feature = "fs")]
#[derive(Clone, Debug)]
pub struct DirSource {
    dir: std::path::PathBuf,
}

#[cfg(feature = "fs")]
impl DirSource {
    /// The folder `dir`.
    pub fn new(dir: impl Into<std::path::PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

#[cfg(feature = "fs")]
impl ShardSource for DirSource {
    async fn read(&self, name: &str) -> Result<Vec<u8>> {
        // Manifest entries are plain file names: refuse anything that would leave the folder.
        let plain = !name.is_empty()
            && std::path::Path::new(name)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        let path = self.dir.join(name);
        if !plain {
            return Err(Error::Source {
                file: path.display().to_string(),
                reason: "not a plain file name inside the bundle".into(),
            });
        }
        std::fs::read(&path).map_err(|e| Error::Source {
            file: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}
