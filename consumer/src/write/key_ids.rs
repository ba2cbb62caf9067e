//! The integer ids of sources and types that the storage key and the read indexes are built on
//! (`event_sources`, `event_types`; migration `2026-12-01-000003_dictionary_keys`).
//!
//! An id never changes and is never reused, so a writer keeps every id it has learned and asks
//! the database only for names it has not seen: a batch of known names costs nothing here. The
//! cache belongs to one database (a worker's pool); it is bounded, and emptied when full, so a
//! producer that invents a new source per event cannot grow it without end.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use diesel::sql_types::{Array, Integer, Text};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

/// How many names each cache holds before it starts again from empty.
const CACHE_LIMIT: usize = 100_000;

/// Learned ids of sources and types for one database.
#[derive(Debug, Default)]
pub struct KeyIds {
    sources: Mutex<HashMap<String, i32>>,
    types: Mutex<HashMap<String, i32>>,
}

/// The two dictionaries.
#[derive(Debug, Clone, Copy)]
enum Dictionary {
    Sources,
    Types,
}

impl Dictionary {
    /// Resolves every name of `$1`, adding the new ones, in the array's order.
    fn statement(self) -> &'static str {
        match self {
            Self::Sources => {
                "SELECT name, warren_source_id(name) AS id FROM unnest($1::text[]) AS name"
            }
            Self::Types => {
                "SELECT name, warren_type_id(name) AS id FROM unnest($1::text[]) AS name"
            }
        }
    }
}

#[derive(QueryableByName)]
struct NamedId {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Integer)]
    id: i32,
}

/// The ids of the names a batch carries.
#[derive(Debug, Default)]
pub struct Resolved {
    sources: HashMap<String, i32>,
    types: HashMap<String, i32>,
}

impl Resolved {
    /// The id of `source`; every source of the batch was resolved.
    pub fn source(&self, source: &str) -> Option<i32> {
        self.sources.get(source).copied()
    }

    /// The id of `event_type`; every type of the batch was resolved.
    pub fn event_type(&self, event_type: &str) -> Option<i32> {
        self.types.get(event_type).copied()
    }
}

impl KeyIds {
    /// The ids of `sources` and `types`, asking the database for the names not cached.
    ///
    /// Run it outside the batch's transaction: a new name's id is committed on its own, so a
    /// batch that rolls back cannot leave an id in the cache that the database no longer has.
    pub async fn resolve<'a>(
        &self,
        connection: &mut AsyncPgConnection,
        sources: impl IntoIterator<Item = &'a str>,
        types: impl IntoIterator<Item = &'a str>,
    ) -> diesel::QueryResult<Resolved> {
        Ok(Resolved {
            sources: self
                .resolve_in(connection, Dictionary::Sources, sources)
                .await?,
            types: self
                .resolve_in(connection, Dictionary::Types, types)
                .await?,
        })
    }

    async fn resolve_in<'a>(
        &self,
        connection: &mut AsyncPgConnection,
        dictionary: Dictionary,
        names: impl IntoIterator<Item = &'a str>,
    ) -> diesel::QueryResult<HashMap<String, i32>> {
        let cache = match dictionary {
            Dictionary::Sources => &self.sources,
            Dictionary::Types => &self.types,
        };
        let mut resolved = HashMap::new();
        // Sorted, so two writers adding the same new names add them in the same order and
        // cannot wait on each other's half.
        let mut missing = BTreeSet::new();
        {
            let cached = cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for name in names {
                if resolved.contains_key(name) || missing.contains(name) {
                    continue;
                }
                match cached.get(name) {
                    Some(id) => {
                        resolved.insert(name.to_owned(), *id);
                    }
                    None => {
                        missing.insert(name.to_owned());
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(resolved);
        }
        let learned: Vec<NamedId> = diesel::sql_query(dictionary.statement())
            .bind::<Array<Text>, _>(missing.into_iter().collect::<Vec<_>>())
            .load(connection)
            .await?;
        let mut cached = cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cached.len() + learned.len() > CACHE_LIMIT {
            cached.clear();
        }
        for NamedId { name, id } in learned {
            cached.insert(name.clone(), id);
            resolved.insert(name, id);
        }
        Ok(resolved)
    }
}
