//! The series index: series keys to dense ids, and metric names to their series.
//!
//! Loaded at start from the series file (`series_file.rs`; from the segments' indexes when
//! that cannot be used) and the WAL. Ids are valid for one process lifetime only and never
//! written to segments.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tsvault_model::SeriesKey;

/// A dense in-memory series id.
pub(crate) type SeriesId = u32;

/// Every series the store knows.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    by_key: HashMap<SeriesKey, SeriesId>,
    keys: Vec<SeriesKey>,
    by_metric: BTreeMap<String, Vec<SeriesId>>,
    /// Series not yet in the series file, in the order they were registered.
    unpersisted: Vec<SeriesId>,
}

impl Registry {
    pub(crate) fn get(&self, key: &SeriesKey) -> Option<SeriesId> {
        self.by_key.get(key).copied()
    }

    /// The id of `key`, registering it when new.
    pub(crate) fn get_or_insert(&mut self, key: &SeriesKey) -> SeriesId {
        if let Some(id) = self.get(key) {
            return id;
        }
        let id = self.insert_persisted(key);
        self.unpersisted.push(id);
        id
    }

    /// Registers `key`, read from the series file (it must be new).
    pub(crate) fn insert_persisted(&mut self, key: &SeriesKey) -> SeriesId {
        if let Some(id) = self.get(key) {
            return id;
        }
        let id = SeriesId::try_from(self.keys.len())
            .expect("series index invariant: fewer than 2^32 series per process");
        self.keys.push(key.clone());
        self.by_key.insert(key.clone(), id);
        self.by_metric
            .entry(key.metric().to_owned())
            .or_default()
            .push(id);
        id
    }

    /// The series registered since the series file was last appended to; they count as
    /// persisted from now (give them back with [`Registry::unpersisted_again`] when the
    /// append fails).
    pub(crate) fn take_unpersisted(&mut self) -> Vec<SeriesId> {
        std::mem::take(&mut self.unpersisted)
    }

    /// Series whose append to the series file failed: they are appended with the next.
    pub(crate) fn unpersisted_again(&mut self, mut ids: Vec<SeriesId>) {
        ids.append(&mut self.unpersisted);
        self.unpersisted = ids;
    }

    pub(crate) fn key(&self, id: SeriesId) -> &SeriesKey {
        &self.keys[id as usize]
    }

    /// Every key, by id.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &SeriesKey> {
        self.keys.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The series of `metric`.
    pub(crate) fn series_of(&self, metric: &str) -> &[SeriesId] {
        self.by_metric.get(metric).map_or(&[], |v| v.as_slice())
    }

    pub(crate) fn metric_names(&self) -> Vec<String> {
        self.by_metric.keys().cloned().collect()
    }

    pub(crate) fn tag_keys(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .keys
            .iter()
            .flat_map(|k| k.tags().map(|(k, _)| k))
            .collect();
        set.into_iter().map(str::to_owned).collect()
    }

    pub(crate) fn tag_values(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .keys
            .iter()
            .flat_map(|k| k.tags().map(|(_, v)| v))
            .collect();
        set.into_iter().map(str::to_owned).collect()
    }
}
