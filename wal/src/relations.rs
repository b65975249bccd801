//! What the stream has said about tables and types so far.
//!
//! pgoutput sends a Relation message before the first change of a table in each session and
//! again whenever the table's shape may have changed (ALTER TABLE, TRUNCATE, a new publication
//! setting), and a Type message before a Relation that uses a non-built-in type. Changes then
//! refer to the table only by OID, so the decoder needs the latest Relation of each OID:
//! every Relation message replaces the cached one. The cache lives as long as one replication
//! session; a new session resends everything it needs.

use std::collections::HashMap;
use std::sync::Arc;

use crate::pgoutput::Relation;

/// A non-built-in type announced by a Type message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// `pg_type.oid`.
    pub oid: u32,
    /// Schema name ("" means `pg_catalog`).
    pub namespace: String,
    /// `pg_type.typname`.
    pub name: String,
}

/// Relations by OID and announced types, in both directions.
#[derive(Debug, Default)]
pub struct RelationCache {
    /// `Arc` so that every change can carry its table's shape without copying it, and an
    /// in-flight change keeps the shape it was decoded with after a later replacement.
    relations: HashMap<u32, Arc<Relation>>,
    types: HashMap<u32, TypeInfo>,
    /// (namespace, name) → oid, for consumers that know a type by name.
    type_oids: HashMap<(String, String), u32>,
}

impl RelationCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a relation, replacing any earlier one with the same OID; returns the shared copy.
    pub fn insert(&mut self, relation: Relation) -> Arc<Relation> {
        let relation = Arc::new(relation);
        self.relations.insert(relation.id, Arc::clone(&relation));
        relation
    }

    /// The latest relation with this OID.
    pub fn get(&self, id: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&id)
    }

    /// Forgets a relation (not needed for pgoutput, which never says a table is gone).
    pub fn remove(&mut self, id: u32) -> Option<Arc<Relation>> {
        self.relations.remove(&id)
    }

    /// Number of cached relations.
    pub fn len(&self) -> usize {
        self.relations.len()
    }

    /// True when no relation is cached.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }

    /// All cached relations, in no particular order.
    pub fn relations(&self) -> impl Iterator<Item = &Arc<Relation>> {
        self.relations.values()
    }

    /// Records a Type message, replacing an earlier one for the same OID (a type can be
    /// renamed; the old name then stops resolving).
    pub fn insert_type(&mut self, oid: u32, namespace: String, name: String) {
        if let Some(old) = self.types.remove(&oid) {
            self.type_oids.remove(&(old.namespace, old.name));
        }
        self.type_oids.insert((namespace.clone(), name.clone()), oid);
        self.types.insert(oid, TypeInfo { oid, namespace, name });
    }

    /// The announced type with this OID.
    pub fn type_info(&self, oid: u32) -> Option<&TypeInfo> {
        self.types.get(&oid)
    }

    /// The OID of an announced type, by schema ("" for `pg_catalog`) and name.
    pub fn type_oid(&self, namespace: &str, name: &str) -> Option<u32> {
        self.type_oids.get(&(namespace.to_owned(), name.to_owned())).copied()
    }

    /// Forgets everything (a new replication session starts).
    pub fn clear(&mut self) {
        self.relations.clear();
        self.types.clear();
        self.type_oids.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{Column, ReplicaIdentity};

    fn rel(id: u32, name: &str, cols: &[&str]) -> Relation {
        Relation {
            id,
            namespace: "public".into(),
            name: name.into(),
            replica_identity: ReplicaIdentity::Default,
            columns: cols
                .iter()
                .map(|c| Column {
                    flags_key: false,
                    name: (*c).into(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    #[test]
    fn relation_messages_replace_by_oid() {
        let mut c = RelationCache::new();
        assert!(c.is_empty());
        let first = c.insert(rel(1, "notes", &["id"]));
        c.insert(rel(2, "other", &["id"]));
        assert_eq!(c.len(), 2);
        // After ALTER TABLE the same OID comes again with more columns.
        c.insert(rel(1, "notes", &["id", "body"]));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(1).unwrap().columns.len(), 2);
        // A holder of the old shape keeps it.
        assert_eq!(first.columns.len(), 1);
        assert!(c.get(3).is_none());
        assert_eq!(c.relations().count(), 2);
        assert_eq!(c.remove(2).unwrap().name, "other");
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn types_resolve_both_ways_and_follow_renames() {
        let mut c = RelationCache::new();
        c.insert_type(16390, "public".into(), "mood".into());
        assert_eq!(c.type_oid("public", "mood"), Some(16390));
        assert_eq!(c.type_info(16390).unwrap().name, "mood");
        c.insert_type(16390, "public".into(), "feeling".into());
        assert_eq!(c.type_oid("public", "mood"), None);
        assert_eq!(c.type_oid("public", "feeling"), Some(16390));
        assert!(c.type_info(1).is_none());
    }
}
