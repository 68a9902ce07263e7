//! The inode table: kernel inode numbers <-> store paths, with what we last
//! learnt about each. Paths are the identity: a rename moves the path of an
//! inode (and of everything below a directory) and keeps its number.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::staging::Staged;
use crate::store::{Attrs, Node, ObjectMeta};

pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

pub struct Inode {
    pub ino: u64,
    pub path: String,
    pub kind: Kind,
    /// What the store holds for this file (None: not in the store yet).
    pub object: Option<ObjectMeta>,
    /// The version before `object`, whose bytes may still be in the disk
    /// cache: served when the store is down before the new one was fetched.
    pub previous: Option<ObjectMeta>,
    /// Attributes as the store knows them, with our own changes on top.
    pub attrs: Attrs,
    /// `attrs` came from the object itself, not from a listing without them.
    pub attrs_known: bool,
    pub modified: SystemTime,
    /// When `object`/`attrs` were last confirmed by the store.
    pub validated: Instant,
    /// Kernel references (lookup counts); the inode may go when 0 and unused.
    pub lookups: u64,
    /// Open file handles.
    pub open: u32,
    /// Local bytes not yet (or just) written to the store.
    pub staged: Option<Arc<Staged>>,
    /// Created here; the store does not have it yet.
    pub local_only: bool,
    /// Removed from the namespace while still referenced.
    pub unlinked: bool,
    /// The version whose bytes the kernel page cache may hold (FOPEN_KEEP_CACHE).
    pub kernel_version: Option<String>,
    /// A background revalidation is running (`Core::refresh_ahead`).
    pub refreshing: bool,
    /// Opens served through us, and opens served by FUSE passthrough (see
    /// `fs::passthrough`), with the version and backing file of the latter.
    pub io_plain: u32,
    pub io_passthrough: u32,
    pub pt_version: Option<String>,
    pub backing: Option<std::sync::Arc<super::passthrough::BackingSlot>>,
}

impl Inode {
    pub fn size(&self) -> u64 {
        match (&self.staged, &self.object) {
            (Some(s), _) => s.size(),
            (None, Some(o)) => o.size,
            (None, None) => 0,
        }
    }

    /// Local state that the store does not reflect yet: must not be replaced
    /// by what the store says.
    pub fn has_local_state(&self) -> bool {
        self.local_only || self.staged.is_some()
    }

    /// Take what the store says. `attrs_known`: the node carries the
    /// object's real attributes (a HEAD does; an S3 listing does not). Unknown
    /// attributes never replace known ones of the same version.
    fn update_from(&mut self, node: &Node, now: Instant, attrs_known: bool) {
        if self.has_local_state() {
            return;
        }
        let (attrs, same) = match node {
            Node::File(m) => (
                &m.attrs,
                self.object.as_ref().is_some_and(|o| o.version == m.version),
            ),
            Node::Dir(d) => (&d.attrs, true),
        };
        if attrs_known || !same || !self.attrs_known {
            self.attrs = attrs.clone();
            self.attrs_known = attrs_known;
        }
        match node {
            Node::File(m) => {
                self.modified = self.attrs.mtime.unwrap_or(m.modified);
                if !same {
                    self.previous = self.object.take();
                }
                self.object = Some(m.clone());
            }
            Node::Dir(d) => {
                if let Some(m) = d.modified {
                    self.modified = m;
                }
            }
        }
        self.validated = now;
    }
}

pub fn kind_of(node: &Node) -> Kind {
    match node {
        Node::File(_) => Kind::File,
        Node::Dir(_) => Kind::Dir,
    }
}

pub struct InodeTable {
    by_ino: HashMap<u64, Inode>,
    by_path: HashMap<String, u64>,
    next: u64,
    /// Counts this host's own changes to names and files; a store answer
    /// asked for before a change to its path must not undo it (a HEAD sent
    /// before a rename over the name, answered after it).
    epoch: u64,
    changed: HashMap<String, u64>,
    /// Answers asked for before this epoch are refused for every path
    /// (`changed` is cleared when it grows large).
    changed_floor: u64,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InodeTable {
    pub fn new() -> Self {
        let mut t = InodeTable {
            by_ino: HashMap::new(),
            by_path: HashMap::new(),
            next: ROOT_INO + 1,
            epoch: 0,
            changed: HashMap::new(),
            changed_floor: 0,
        };
        let root = t.blank(ROOT_INO, String::new(), Kind::Dir);
        t.by_ino.insert(ROOT_INO, root);
        t.by_path.insert(String::new(), ROOT_INO);
        t
    }

    fn blank(&self, ino: u64, path: String, kind: Kind) -> Inode {
        Inode {
            ino,
            path,
            kind,
            object: None,
            previous: None,
            attrs: Attrs::default(),
            attrs_known: true,
            modified: SystemTime::now(),
            validated: Instant::now(),
            lookups: 0,
            open: 0,
            staged: None,
            local_only: false,
            unlinked: false,
            kernel_version: None,
            refreshing: false,
            io_plain: 0,
            io_passthrough: 0,
            pt_version: None,
            backing: None,
        }
    }

    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ino.is_empty()
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.by_ino.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        self.by_ino.get_mut(&ino)
    }

    pub fn by_path(&self, path: &str) -> Option<&Inode> {
        self.by_path.get(path).and_then(|i| self.by_ino.get(i))
    }

    /// Record what the store says is at `path`; returns the inode number. A
    /// file that became a directory (or the other way) gets a new inode.
    pub fn upsert(&mut self, path: &str, node: &Node, now: Instant) -> u64 {
        self.upsert_listed(path, node, now, true)
    }

    /// As `upsert`, for a node from a listing that may lack attributes.
    pub fn upsert_listed(
        &mut self,
        path: &str,
        node: &Node,
        now: Instant,
        attrs_known: bool,
    ) -> u64 {
        let kind = kind_of(node);
        if let Some(&ino) = self.by_path.get(path) {
            let inode = self
                .by_ino
                .get_mut(&ino)
                .expect("path map points at a live inode");
            if inode.kind == kind {
                inode.update_from(node, now, attrs_known);
                return ino;
            }
            self.detach(path);
        }
        let ino = self.next;
        self.next += 1;
        let mut inode = self.blank(ino, path.to_string(), kind);
        inode.update_from(node, now, attrs_known);
        self.by_ino.insert(ino, inode);
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    /// The epoch to note before asking the store about a path (see
    /// `answer_outdated`).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// This host changed `path` (created, replaced, renamed, removed,
    /// uploaded or changed its attributes).
    pub fn note_change(&mut self, path: &str) {
        self.epoch += 1;
        if self.changed.len() >= CHANGED_PATHS_KEPT {
            self.changed.clear();
            self.changed_floor = self.epoch;
        }
        self.changed.insert(path.to_string(), self.epoch);
    }

    /// A store answer about `path` asked for at `since` predates one of our
    /// own changes to it: what we hold is newer.
    pub fn answer_outdated(&self, path: &str, since: u64) -> bool {
        since < self.changed_floor || self.changed.get(path).is_some_and(|&e| e > since)
    }

    /// As `upsert`, unless the answer was asked for before our own change to
    /// `path`; then the inode now at `path`, if any.
    pub fn upsert_since(&mut self, path: &str, node: &Node, since: u64) -> Option<u64> {
        if self.answer_outdated(path, since) {
            return self.by_path.get(path).copied();
        }
        Some(self.upsert(path, node, Instant::now()))
    }

    /// A new file or directory made here.
    pub fn insert_local(&mut self, path: &str, kind: Kind, attrs: Attrs) -> u64 {
        self.note_change(path);
        self.detach(path);
        let ino = self.next;
        self.next += 1;
        let mut inode = self.blank(ino, path.to_string(), kind);
        inode.attrs = attrs;
        inode.local_only = kind == Kind::File;
        self.by_ino.insert(ino, inode);
        self.by_path.insert(path.to_string(), ino);
        ino
    }

    /// Take `path` out of the namespace; the inode lives on while referenced.
    pub fn detach(&mut self, path: &str) {
        self.note_change(path);
        if let Some(ino) = self.by_path.remove(path)
            && let Some(inode) = self.by_ino.get_mut(&ino)
        {
            inode.unlinked = true;
            self.maybe_drop(ino);
        }
    }

    /// Move `from` (and, for a directory, everything below it) to `to`.
    pub fn rename(&mut self, from: &str, to: &str) {
        self.detach(to);
        let below = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&below))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let new = format!("{to}{}", &old[from.len()..]);
            self.note_change(&old);
            self.note_change(&new);
            if let Some(inode) = self.by_ino.get_mut(&ino) {
                inode.path = new.clone();
                if let Some(obj) = &mut inode.object {
                    obj.key = new.clone();
                }
            }
            self.by_path.insert(new, ino);
        }
    }

    /// Children made here that the store does not list yet.
    pub fn local_children(&self, dir: &str) -> Vec<(String, u64, Kind)> {
        self.by_ino
            .values()
            .filter(|i| {
                i.local_only && !i.unlinked && parent_of(&i.path) == dir && !i.path.is_empty()
            })
            .map(|i| (crate::store::key_name(&i.path).to_string(), i.ino, i.kind))
            .collect()
    }

    pub fn forget(&mut self, ino: u64, n: u64) {
        if let Some(inode) = self.by_ino.get_mut(&ino) {
            inode.lookups = inode.lookups.saturating_sub(n);
            self.maybe_drop(ino);
        }
        if self.by_ino.len() > KEEP_IDLE {
            self.prune();
        }
    }

    /// Drop the inode if nothing refers to it any more. One still in the
    /// namespace is kept while the table is small: the kernel forgets inodes
    /// whenever it reclaims memory, and what we knew of them (attributes,
    /// version, whether their bytes are cached) still answers the next lookup
    /// without a store request while it is fresh.
    pub fn maybe_drop(&mut self, ino: u64) {
        self.drop_idle(ino, self.by_ino.len() > KEEP_IDLE);
    }

    fn drop_idle(&mut self, ino: u64, force: bool) {
        let Some(inode) = self.by_ino.get(&ino) else {
            return;
        };
        if ino == ROOT_INO || inode.lookups > 0 || inode.open > 0 || inode.staged.is_some() {
            return;
        }
        if !force && self.by_path.get(&inode.path) == Some(&ino) {
            return;
        }
        // A local-only file still in the namespace is the only record of it.
        if inode.local_only && !inode.unlinked {
            return;
        }
        let path = inode.path.clone();
        self.by_ino.remove(&ino);
        if self.by_path.get(&path) == Some(&ino) {
            self.by_path.remove(&path);
        }
    }

    /// Drop every inode the kernel holds no reference to (after big listings).
    pub fn prune(&mut self) {
        let idle: Vec<u64> = self
            .by_ino
            .values()
            .filter(|i| i.lookups == 0 && i.open == 0)
            .map(|i| i.ino)
            .collect();
        for ino in idle {
            self.drop_idle(ino, true);
        }
    }
}

/// Our own recent changes remembered by path (then all answers asked for
/// before the oldest forgotten one are refused).
const CHANGED_PATHS_KEPT: usize = 4096;

/// Inodes the kernel no longer references are kept up to this many (about
/// 50 MiB), then dropped by `prune`.
const KEEP_IDLE: usize = 100_000;

/// The directory part of a key ("" for top-level names).
pub fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DirMeta;

    fn dir(key: &str) -> Node {
        Node::Dir(DirMeta {
            key: key.into(),
            modified: None,
            attrs: Attrs::default(),
        })
    }

    #[test]
    fn rename_moves_descendants_and_keeps_numbers() {
        let mut t = InodeTable::new();
        let now = Instant::now();
        let a = t.upsert("a", &dir("a"), now);
        let b = t.upsert("a/b", &dir("a/b"), now);
        let ab2 = t.upsert("ab", &dir("ab"), now);
        t.rename("a", "x");
        assert_eq!(t.by_path("x").unwrap().ino, a);
        assert_eq!(t.by_path("x/b").unwrap().ino, b);
        assert_eq!(
            t.by_path("ab").unwrap().ino,
            ab2,
            "a sibling sharing the prefix stays"
        );
        assert!(t.by_path("a/b").is_none());
    }

    #[test]
    fn forgotten_inodes_are_kept_while_named_and_dropped_when_gone() {
        let mut t = InodeTable::new();
        let a = t.upsert("a", &dir("a"), Instant::now());
        t.get_mut(a).unwrap().lookups = 2;
        t.forget(a, 1);
        t.forget(a, 1);
        // Unreferenced but still named: what we knew answers the next lookup.
        assert_eq!(t.by_path("a").map(|i| i.ino), Some(a));
        // Gone from the namespace and unreferenced: dropped.
        t.detach("a");
        assert!(t.get(a).is_none());
        // Pruned when the table has to shrink.
        let b = t.upsert("b", &dir("b"), Instant::now());
        t.prune();
        assert!(t.get(b).is_none());
        assert!(t.get(ROOT_INO).is_some());
    }

    /// A store answer asked for before our own change to a path (a HEAD
    /// sent before a rename over the name, answered after it) is not taken.
    #[test]
    fn answers_older_than_our_changes_are_refused() {
        let mut t = InodeTable::new();
        let old = Node::File(ObjectMeta {
            key: "a.jpg".into(),
            size: 3,
            version: "old".into(),
            modified: SystemTime::UNIX_EPOCH,
            attrs: Attrs::default(),
        });
        t.upsert("a.jpg", &old, Instant::now());
        let since = t.epoch();
        // Meanwhile: a new file renamed over a.jpg.
        let tmp = t.insert_local("tmp", Kind::File, Attrs::default());
        t.rename("tmp", "a.jpg");
        assert_eq!(t.upsert_since("a.jpg", &old, since), Some(tmp));
        assert!(
            t.get(tmp).unwrap().object.is_none(),
            "not replaced by the old answer"
        );
        // Meanwhile: removed here; the late answer does not bring it back.
        let since = t.epoch();
        t.detach("a.jpg");
        assert_eq!(t.upsert_since("a.jpg", &old, since), None);
        assert!(t.by_path("a.jpg").is_none());
        // An answer asked for after the change is taken.
        let since = t.epoch();
        assert!(t.upsert_since("a.jpg", &old, since).is_some());
    }
}
