//! The metadata store: every record berth must remember across a crash (pods, containers,
//! images) lives here, one redb table per record type.
//!
//! redb gives us what containerd gets from bbolt: copy-on-write B-trees, one writer, and
//! commits that are atomic and durable (fsync before `commit` returns). A `kill -9` at any
//! moment leaves the file at the last committed transaction, so a record is either wholly
//! there or not there at all. Each value is a JSON envelope with a schema version, so a
//! newer berth can migrate older records and an older berth refuses newer ones instead of
//! misreading them.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A type that is stored in its own table of the metadata store.
pub trait Record: Serialize + DeserializeOwned {
    /// The redb table that holds records of this type.
    const TABLE: &'static str;
    /// The schema version written with every record; bump it when the layout changes.
    const VERSION: u32;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("metadata store {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("metadata store: {0}")]
    Storage(String),
    #[error("metadata record {table}/{key} is unreadable: {reason}")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },
    #[error(
        "metadata record {table}/{key} has schema version {found}, newer than this berth understands ({supported})"
    )]
    TooNew {
        table: &'static str,
        key: String,
        found: u32,
        supported: u32,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn storage<E: std::fmt::Display>(e: E) -> Error {
    Error::Storage(e.to_string())
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    data: T,
}

/// The open store. Cheap to share behind an `Arc`; redb serialises writers itself.
pub struct MetaStore {
    db: redb::Database,
}

impl MetaStore {
    /// Opens the store at `path`, creating it if needed. redb takes an exclusive file lock,
    /// so a second daemon on the same root fails here instead of corrupting anything.
    pub fn open(path: &Path) -> Result<Self> {
        let db = redb::Database::create(path).map_err(|source| Error::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self { db })
    }

    /// Writes `value` under `key` and returns once the commit is durable.
    pub fn put<T: Record>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(&Envelope {
            v: T::VERSION,
            data: value,
        })
        .map_err(storage)?;
        let txn = self.db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(def::<T>()).map_err(storage)?;
            table.insert(key, bytes.as_slice()).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Reads one record; `None` when the key is absent.
    pub fn get<T: Record>(&self, key: &str) -> Result<Option<T>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = match txn.open_table(def::<T>()) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        match table.get(key).map_err(storage)? {
            Some(v) => decode::<T>(key, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Deletes one record; returns whether it existed. Deleting an absent key is not an error.
    pub fn delete<T: Record>(&self, key: &str) -> Result<bool> {
        let txn = self.db.begin_write().map_err(storage)?;
        let existed = {
            let mut table = txn.open_table(def::<T>()).map_err(storage)?;
            table.remove(key).map_err(storage)?.is_some()
        };
        txn.commit().map_err(storage)?;
        Ok(existed)
    }

    /// Every record of a type, in key order. A record that cannot be decoded is returned
    /// as an error entry so the caller can report it and go on with the rest.
    pub fn list<T: Record>(&self) -> Result<Vec<(String, Result<T>)>> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = match txn.open_table(def::<T>()) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let key = k.value().to_string();
            let rec = decode::<T>(&key, v.value());
            out.push((key, rec));
        }
        Ok(out)
    }
}

fn def<T: Record>() -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(T::TABLE)
}

fn decode<T: Record>(key: &str, bytes: &[u8]) -> Result<T> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    let corrupt = |reason: String| Error::Corrupt {
        table: T::TABLE,
        key: key.to_string(),
        reason,
    };
    let Version { v } = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if v > T::VERSION {
        return Err(Error::TooNew {
            table: T::TABLE,
            key: key.to_string(),
            found: v,
            supported: T::VERSION,
        });
    }
    let env: Envelope<T> = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    Ok(env.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Pod {
        name: String,
        n: u64,
    }
    impl Record for Pod {
        const TABLE: &'static str = "pods";
        const VERSION: u32 = 1;
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct PodV0 {
        name: String,
    }
    impl Record for PodV0 {
        const TABLE: &'static str = "pods";
        const VERSION: u32 = 0;
    }

    #[test]
    fn put_get_list_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("meta.redb")).unwrap();
        assert!(store.get::<Pod>("a").unwrap().is_none());
        assert!(store.list::<Pod>().unwrap().is_empty());
        let a = Pod {
            name: "a".into(),
            n: 1,
        };
        store.put("a", &a).unwrap();
        store
            .put(
                "b",
                &Pod {
                    name: "b".into(),
                    n: 2,
                },
            )
            .unwrap();
        assert_eq!(store.get::<Pod>("a").unwrap(), Some(a));
        let keys: Vec<_> = store
            .list::<Pod>()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["a", "b"]);
        assert!(store.delete::<Pod>("a").unwrap());
        assert!(!store.delete::<Pod>("a").unwrap());
        assert!(store.get::<Pod>("a").unwrap().is_none());
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let store = MetaStore::open(&path).unwrap();
            store
                .put(
                    "x",
                    &Pod {
                        name: "x".into(),
                        n: 7,
                    },
                )
                .unwrap();
        }
        let store = MetaStore::open(&path).unwrap();
        assert_eq!(store.get::<Pod>("x").unwrap().unwrap().n, 7);
    }

    #[test]
    fn newer_schema_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("meta.redb")).unwrap();
        store
            .put(
                "p",
                &Pod {
                    name: "p".into(),
                    n: 1,
                },
            )
            .unwrap();
        match store.get::<PodV0>("p") {
            Err(Error::TooNew {
                found: 1,
                supported: 0,
                ..
            }) => {}
            other => panic!("expected TooNew, got {other:?}", other = other.map(|_| ())),
        }
    }
}
