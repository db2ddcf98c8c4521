//! The files backing: one plain SQLite file per actor (`<name>.db`) in the store's
//! `actors/` directory, through SQLite's unix VFS. Durability is SQLite's own
//! (`PRAGMA synchronous`); a delete removes the database before its journal, so a kill
//! between the two never leaves a database without its hot journal.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::{Backend, create_private_dir};
use crate::config::{Durability, StoreLayout};
use crate::error::{Error, Result};
use crate::names::validate_actor_name;
use crate::transfer::{self, Staged};

/// One SQLite file per actor.
#[derive(Debug)]
pub(crate) struct FilesBacking {
    /// Absolute, so that no path SQLite is given starts with "file:" (the bundled SQLite
    /// reads such names as URIs, see `names`).
    dir: PathBuf,
}

impl FilesBacking {
    /// The actors' directory under the store `dir`, created unless `read_only`.
    pub(crate) fn open(dir: &Path, read_only: bool) -> Result<FilesBacking> {
        let actors = dir.join(StoreLayout::Files.dir_name());
        if !read_only {
            create_private_dir(&actors)?;
        }
        let actors = std::path::absolute(&actors).map_err(Error::io("cannot resolve", &actors))?;
        Ok(FilesBacking { dir: actors })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.db"))
    }
}

impl Backend for FilesBacking {
    fn open(&self, name: &str, flags: OpenFlags) -> rusqlite::Result<Connection> {
        Connection::open_with_flags(self.path(name), flags)
    }

    fn actor_file(&self, name: &str) -> Option<PathBuf> {
        Some(self.path(name))
    }

    fn synchronous(&self, durability: Durability) -> Option<&'static str> {
        Some(match durability {
            Durability::Full => "FULL",
            Durability::Relaxed => "NORMAL",
        })
    }

    fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.path(name).is_file())
    }

    fn list(&self) -> Result<Vec<String>> {
        let dir = &self.dir;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(Error::io("cannot list", dir))? {
            let entry = entry.map_err(Error::io("cannot list", dir))?;
            let file = entry.file_name();
            if let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".db"))
                && validate_actor_name(name).is_ok()
            {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        // The database first, then its journal: a kill between the two leaves a journal
        // beside no database, which SQLite ignores and deletes when it creates a database
        // of that name (it is only hot beside a non-empty one) and an import removes
        // before linking one in. The other order could leave a database whose hot journal
        // (a crashed transaction not yet rolled back) is gone: a torn actor.
        std::fs::remove_file(&path).map_err(Error::io("cannot delete", &path))?;
        let journal = self.dir.join(format!("{name}.db-journal"));
        match std::fs::remove_file(&journal) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("cannot delete", journal)(e))
            }
            _ => Ok(()),
        }
    }

    fn stats(&self, name: &str) -> Result<(u64, Option<shoal_vfs::DbStats>)> {
        let path = self.path(name);
        let meta = std::fs::metadata(&path).map_err(Error::io("cannot stat", &path))?;
        Ok((meta.len(), None))
    }

    fn import(&self, staged: &Staged, name: &str) -> Result<()> {
        if transfer::link_into_place(staged, &self.path(name))? {
            Ok(())
        } else {
            Err(Error::ActorExists(name.to_owned()))
        }
    }
}
