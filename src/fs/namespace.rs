//! Names: lookup, listing, mkdir, unlink, rmdir, rename.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::inode::{Kind, kind_of, parent_of};
use super::{Attr, Core, FsError, FsResult};
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};

use crate::cache::DiskCache;
use crate::store::{
    Attrs, GetResult, Node, ObjectMeta, Store, StoreError, StoreResult, join_key, key_name,
    valid_name,
};

/// One directory as the store listed it, sorted by name.
pub struct Listing {
    /// Kept up to date with our own changes (see `Core::listed_change`).
    entries: Mutex<BTreeMap<String, Node>>,
    pub at: Instant,
    /// Where listings carry no attributes (S3): the stats asked for so far,
    /// and ahead of them in listing order (the order `ls -l` asks in) a
    /// window that grows with each stat asked, so `ls -l` of a large
    /// directory costs parallel round trips, while opening one file in a
    /// listed directory costs one.
    stats: Mutex<ListedStats>,
}

#[derive(Default)]
struct ListedStats {
    started: HashMap<String, SharedStat>,
    /// How many stats were asked for: the window ahead is one less, up to
    /// LISTING_STATS_AHEAD.
    asked: usize,
}

type SharedStat = Shared<BoxFuture<'static, StoreResult<Option<Node>>>>;

/// How far ahead of the stats asked for a listing's stats are started.
const LISTING_STATS_AHEAD: usize = 32;

/// A listed file up to this size is fetched whole instead of a HEAD when its
/// attributes are needed: the same one request, and a page that lists a
/// directory of thumbnails and then reads them (a gallery) needs no second
/// one. Kept small so that `ls -l` of a large directory stays cheap.
const LISTED_FETCH_BYTES: u64 = 64 * 1024;

/// GET the first `limit` bytes of `key`: its metadata, and its bytes into
/// the disk cache when the whole file fits. `None`: no file there.
async fn get_small(
    store: &dyn Store,
    cache: &DiskCache,
    key: &str,
    limit: u64,
) -> StoreResult<Option<ObjectMeta>> {
    let (meta, mut body) = match store.get(key, Some(0..limit), None).await {
        Ok(GetResult::Body { meta, body }) => (meta, body),
        Err(StoreError::NotFound) => return Ok(None),
        // Cannot happen without a version to match; ask plainly.
        Ok(GetResult::NotModified) => return store.head(key).await,
        Err(e) => return Err(e),
    };
    // Read to the end even when not keeping the bytes (a larger file's first
    // `limit` bytes): the connection then goes back to the pool.
    let keep = meta.size <= limit && !cache.contains(&meta);
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) if keep => bytes.extend_from_slice(&c),
            Ok(_) => {}
            // The metadata is the answer; the bytes come with the open.
            Err(_) => return Ok(Some(meta)),
        }
    }
    if keep {
        cache.insert_bytes(&meta, &bytes);
    }
    Ok(Some(meta))
}

impl Listing {
    fn new(entries: BTreeMap<String, Node>) -> Self {
        Listing {
            entries: Mutex::new(entries),
            at: Instant::now(),
            stats: Mutex::default(),
        }
    }

    /// The stat of file `name`, shared with a lookup of the same name, and
    /// the next files' stats started ahead of the lookups that will follow.
    fn stat_of(
        self: &Arc<Self>,
        name: &str,
        store: &Arc<dyn Store>,
        cache: &Arc<DiskCache>,
        dir: &str,
    ) -> Option<SharedStat> {
        let fetch = store.lookup_fetch_bytes().min(LISTED_FETCH_BYTES);
        let entries = self.entries.lock().unwrap();
        let mut stats = self.stats.lock().unwrap();
        let start = |name: &str, listed_size: u64| -> SharedStat {
            let (store, cache) = (store.clone(), cache.clone());
            let key = join_key(dir, name);
            // The listing says it is a file: a HEAD is all it takes (a stat
            // may also list below the name), or a GET that brings a small
            // file's bytes too.
            async move {
                let meta = if listed_size <= fetch {
                    get_small(&*store, &cache, &key, fetch).await?
                } else {
                    store.head(&key).await?
                };
                Ok(meta.map(Node::File))
            }
            .boxed()
            .shared()
        };
        let Some(Node::File(listed)) = entries.get(name) else {
            return None;
        };
        stats.asked += 1;
        let wanted = stats
            .started
            .entry(name.to_string())
            .or_insert_with(|| start(name, listed.size))
            .clone();
        // Files after this one, in listing order, not started yet.
        let ahead = (stats.asked - 1).min(LISTING_STATS_AHEAD);
        let next: Vec<(String, u64)> = entries
            .range::<str, _>((std::ops::Bound::Excluded(name), std::ops::Bound::Unbounded))
            .filter_map(|(n, node)| match node {
                Node::File(m) => Some((n.clone(), m.size)),
                Node::Dir(_) => None,
            })
            .take(ahead)
            .filter(|(n, _)| !stats.started.contains_key(n))
            .collect();
        for (n, size) in next {
            let f = start(&n, size);
            stats.started.insert(n, f.clone());
            tokio::spawn(f.map(|_| ()));
        }
        Some(wanted)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
}

/// An open directory: its entries as listed at opendir.
pub struct DirSnapshot {
    dir: String,
    /// The listing the entries came from, to record an entry again if its
    /// idle inode was pruned since opendir.
    listing: Arc<Listing>,
    pub entries: Vec<DirEntry>,
}

/// Warn once per odd key, not on every listing.
fn warn_once(key: &str, why: &str) {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if seen.lock().unwrap().insert(key.to_string()) {
        tracing::warn!(key = %key, "skipping a store key that cannot be shown as a file: {why}");
    }
}

impl Core {
    /// The inode at `path`, from what we know if it is fresh, else from the store.
    pub(crate) async fn resolve(&self, path: &str) -> FsResult<u64> {
        if let Some(known) = self.resolve_known(path) {
            return known;
        }
        // What we knew of it, however old: served while the store is down.
        let stale = || {
            let t = self.inodes.lock().unwrap();
            t.by_path(path).map(|i| i.ino)
        };
        if self.store_down()
            && let Some(ino) = stale()
        {
            return Ok(ino);
        }
        let since = self.inodes.lock().unwrap().epoch();
        let result = match self.listed_stat(path) {
            Some(stat) => stat.await,
            None => self.stat_for_lookup(path).await,
        };
        self.note_store(&result);
        let node = match result {
            Err(StoreError::Unavailable(_)) if stale().is_some() => return Ok(stale().unwrap()),
            r => r?,
        };
        match node {
            Some(node) => {
                let mut t = self.inodes.lock().unwrap();
                t.upsert_since(path, &node, since).ok_or(FsError::NotFound)
            }
            None if self.inodes.lock().unwrap().answer_outdated(path, since) => {
                // Made here meanwhile: ask what we know now.
                self.resolve_known(path).unwrap_or(Err(FsError::NotFound))
            }
            None => {
                if self.caching() {
                    self.missing.insert(path.to_string(), ());
                }
                Err(FsError::NotFound)
            }
        }
    }

    /// Our own change at `path` (`None`: it is gone): the cached listing of
    /// its directory learns it in place instead of being dropped, so the next
    /// lookups and creates there need no listing from the store.
    /// The directory's own mtime moves to now as well (POSIX: an entry
    /// added or removed updates it), instead of showing the time from before
    /// the change until its attributes expire.
    pub(crate) fn listed_change(&self, path: &str, node: Option<Node>) {
        self.missing.invalidate(path);
        if let Some(l) = self.listings.get(parent_of(path)) {
            let mut entries = l.entries.lock().unwrap();
            match node {
                Some(n) => entries.insert(key_name(path).to_string(), n),
                None => entries.remove(key_name(path)),
            };
        }
        let mut t = self.inodes.lock().unwrap();
        if let Some(ino) = t.by_path(parent_of(path)).map(|i| i.ino)
            && let Some(dir) = t.get_mut(ino)
        {
            dir.modified = std::time::SystemTime::now();
            dir.attrs.mtime = None;
        }
    }

    /// The shared stat of `path` from its directory's fresh listing, where
    /// that listing has the file but not its attributes.
    pub(crate) fn listed_stat(&self, path: &str) -> Option<SharedStat> {
        if self.listings_suffice() || path.is_empty() {
            return None;
        }
        let dir = parent_of(path);
        let listing = self.listings.get(dir)?;
        if !self.fresh(listing.at) {
            return None;
        }
        listing.stat_of(key_name(path), &self.store, &self.cache, dir)
    }

    /// `stat` of a name being looked up. Where the store finds it worthwhile
    /// and no listing of the directory is at hand (a page reading thumbnails
    /// by name, not `ls -l`), a ranged GET instead: it answers the same
    /// question, and a small file's bytes go into the disk cache with it.
    async fn stat_for_lookup(&self, path: &str) -> StoreResult<Option<Node>> {
        let small = self.store.lookup_fetch_bytes();
        if small == 0 || path.is_empty() || self.listings.contains_key(parent_of(path)) {
            return self.store.stat(path).await;
        }
        match get_small(&*self.store, &self.cache, path, small).await? {
            Some(meta) => Ok(Some(Node::File(meta))),
            // Not a file: a directory, or nothing.
            None => self.store.stat_without_file(path).await,
        }
    }

    /// What we know of `path` without asking the store, if it is fresh.
    fn resolve_known(&self, path: &str) -> Option<FsResult<u64>> {
        {
            let t = self.inodes.lock().unwrap();
            if let Some(i) = t.by_path(path)
                && (i.has_local_state()
                    || (self.fresh(i.validated) && self.attrs_usable(i))
                    || path.is_empty())
            {
                return Some(Ok(i.ino));
            }
        }
        if self.missing.contains_key(path) {
            return Some(Err(FsError::NotFound));
        }
        let listing = self.listings.get(parent_of(path))?;
        if !self.fresh(listing.at) {
            return None;
        }
        let Some(node) = listing.entries.lock().unwrap().get(key_name(path)).cloned() else {
            return Some(Err(FsError::NotFound));
        };
        // Where the listing lacks the file's own attributes, what we learnt
        // earlier of this same version stays (see `Inode::update_from`).
        let mut t = self.inodes.lock().unwrap();
        let ino = t.upsert_listed(path, &node, listing.at, self.store.listing_has_attrs());
        self.attrs_usable(t.get(ino)?).then_some(Ok(ino))
    }

    fn counted_lookup(&self, ino: u64) -> FsResult<Attr> {
        let mut t = self.inodes.lock().unwrap();
        let inode = t.get_mut(ino).ok_or(FsError::NotFound)?;
        inode.lookups += 1;
        Ok(self.attr_of(inode))
    }

    /// The attributes of an entry READDIRPLUS hands the kernel with its
    /// name, counted as a lookup (the kernel takes a reference on each such
    /// entry, as for a LOOKUP). Undo with `forget(attr.ino, 1)` if the entry
    /// did not fit in the reply. The inode is the one now at the entry's
    /// path: a huge listing may have had idle inodes pruned since opendir,
    /// and a newer answer about the path must not give way to the snapshot.
    pub fn lookup_listed(&self, snapshot: &DirSnapshot, e: &DirEntry) -> FsResult<Attr> {
        let path = join_key(&snapshot.dir, &e.name);
        let present = |t: &super::inode::InodeTable| {
            t.by_path(&path).filter(|i| i.kind == e.kind).map(|i| i.ino)
        };
        // Not under the inode lock: listings are locked before inodes.
        let listed = match present(&self.inodes.lock().unwrap()) {
            Some(_) => None,
            None => snapshot
                .listing
                .entries
                .lock()
                .unwrap()
                .get(&e.name)
                .cloned(),
        };
        let mut t = self.inodes.lock().unwrap();
        let ino = match (present(&t), listed) {
            (Some(ino), _) => ino,
            (None, Some(node)) => {
                let at = snapshot.listing.at;
                t.upsert_listed(&path, &node, at, self.store.listing_has_attrs())
            }
            (None, None) => return Err(FsError::NotFound),
        };
        let inode = t.get_mut(ino).ok_or(FsError::NotFound)?;
        inode.lookups += 1;
        Ok(self.attr_of(inode))
    }

    /// A kernel lookup: the child's attributes, and one more kernel reference.
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let (_, path) = self.child_path(parent, name)?;
        let ino = self.resolve(&path).await?;
        self.counted_lookup(ino)
    }

    /// A lookup answered from what we know, with no store request; `None`
    /// when the store must be asked (use `lookup`).
    pub fn lookup_known(&self, parent: u64, name: &OsStr) -> Option<FsResult<Attr>> {
        let path = match self.child_path(parent, name) {
            Ok((_, path)) => path,
            Err(e) => return Some(Err(e)),
        };
        Some(
            self.resolve_known(&path)?
                .and_then(|ino| self.counted_lookup(ino)),
        )
    }

    /// The listing of `dir`, from the cache if fresh.
    async fn listing(&self, dir: &str) -> FsResult<Arc<Listing>> {
        if let Some(l) = self.listings.get(dir)
            && self.fresh(l.at)
        {
            return Ok(l);
        }
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut entries = BTreeMap::new();
        let mut token = None;
        loop {
            let page = self.store.list(&prefix, true, token).await?;
            for d in page.dirs {
                let name = key_name(&d.key).to_string();
                if valid_name(&name) && d.key.len() > prefix.len() {
                    entries.insert(name, Node::Dir(d));
                } else {
                    warn_once(&d.key, "not a valid directory name");
                }
            }
            for f in page.files {
                let name = f.key[prefix.len()..].to_string();
                if !valid_name(&name) {
                    warn_once(&f.key, "not a valid file name");
                } else if matches!(entries.get(&name), Some(Node::Dir(_))) {
                    warn_once(
                        &f.key,
                        "a file and a directory share this name; showing the directory",
                    );
                } else {
                    entries.insert(name, Node::File(f));
                }
            }
            token = page.next;
            if token.is_none() {
                break;
            }
        }
        let listing = Arc::new(Listing::new(entries));
        if self.caching() {
            self.listings.insert(dir.to_string(), listing.clone());
        }
        Ok(listing)
    }

    /// Snapshot a directory for readdir; returns a handle.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let (dir, kind) = self.path_of(ino)?;
        if kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let listing = self.listing(&dir).await?;
        // Listings are locked before inodes (see `lookup_listed`); no copy
        // of a huge listing is made.
        let entries = listing.entries.lock().unwrap();
        let mut out = Vec::with_capacity(entries.len() + 2);
        let attrs_known = self.store.listing_has_attrs();
        let mut t = self.inodes.lock().unwrap();
        let parent_ino = t
            .by_path(parent_of(&dir))
            .map(|i| i.ino)
            .unwrap_or(super::ROOT_INO);
        out.push(DirEntry {
            ino,
            kind: Kind::Dir,
            name: ".".into(),
        });
        out.push(DirEntry {
            ino: parent_ino,
            kind: Kind::Dir,
            name: "..".into(),
        });
        for (name, node) in entries.iter() {
            let path = join_key(&dir, name);
            let child = t.upsert_listed(&path, node, listing.at, attrs_known);
            let kind = t.get(child).map(|i| i.kind).unwrap_or(kind_of(node));
            out.push(DirEntry {
                ino: child,
                kind,
                name: name.clone(),
            });
        }
        for (name, child, kind) in t.local_children(&dir) {
            if !entries.contains_key(&name) {
                out.push(DirEntry {
                    ino: child,
                    kind,
                    name,
                });
            }
        }
        drop(entries);
        drop(t);
        let fh = self.new_fh();
        let snapshot = DirSnapshot {
            dir,
            listing,
            entries: out,
        };
        self.dir_handles
            .lock()
            .unwrap()
            .insert(fh, Arc::new(snapshot));
        Ok(fh)
    }

    /// Entries of an open directory from `offset` on.
    pub fn readdir(&self, fh: u64) -> FsResult<Arc<DirSnapshot>> {
        self.dir_handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dir_handles.lock().unwrap().remove(&fh);
    }

    /// Whether a directory has any child, in the store or made here.
    async fn dir_is_empty(&self, dir: &str) -> FsResult<bool> {
        if !self.inodes.lock().unwrap().local_children(dir).is_empty() {
            return Ok(false);
        }
        let page = self.store.list(&format!("{dir}/"), true, None).await?;
        Ok(page.files.iter().all(|f| f.key.len() <= dir.len() + 1) && page.dirs.is_empty())
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        self.check_writable()?;
        let (_, path) = self.child_path(parent, name)?;
        match self.resolve(&path).await {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let attrs = Attrs {
            mode: Some(mode & 0o7777),
            uid: Some(uid),
            gid: Some(gid),
            mtime: None,
        };
        self.store.create_dir(&path, &attrs).await?;
        let node = self
            .store
            .stat(&path)
            .await?
            .unwrap_or(Node::Dir(crate::store::DirMeta {
                key: path.clone(),
                modified: None,
                attrs: attrs.clone(),
            }));
        self.listed_change(&path, Some(node.clone()));
        if self.caching() {
            // Nothing was below it (the lookup above said so): creating files
            // in it needs no store request to learn that their names are free.
            self.listings
                .insert(path.clone(), Arc::new(Listing::new(BTreeMap::new())));
        }
        let mut t = self.inodes.lock().unwrap();
        let ino = t.upsert(&path, &node, Instant::now());
        let inode = t.get_mut(ino).ok_or(FsError::NotFound)?;
        inode.attrs = inode.attrs.merged(&attrs);
        inode.lookups += 1;
        Ok(self.attr_of(inode))
    }

    pub async fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.check_writable()?;
        let (_, path) = self.child_path(parent, name)?;
        let ino = self.resolve(&path).await?;
        let (kind, local_only, object) = {
            let t = self.inodes.lock().unwrap();
            let i = t.get(ino).ok_or(FsError::NotFound)?;
            (i.kind, i.local_only, i.object.clone())
        };
        if kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        if !local_only {
            self.store.delete(&path).await?;
        }
        if let Some(obj) = object {
            self.cache.remove(&obj);
        }
        self.inodes.lock().unwrap().detach(&path);
        self.listed_change(&path, None);
        if self.caching() {
            self.missing.insert(path, ());
        }
        Ok(())
    }

    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.check_writable()?;
        let (_, path) = self.child_path(parent, name)?;
        let ino = self.resolve(&path).await?;
        if self.path_of(ino)?.1 != Kind::Dir {
            return Err(FsError::NotDir);
        }
        if !self.dir_is_empty(&path).await? {
            return Err(FsError::NotEmpty);
        }
        self.store.remove_dir(&path).await?;
        self.inodes.lock().unwrap().detach(&path);
        self.listed_change(&path, None);
        self.listings.invalidate(&path);
        if self.caching() {
            self.missing.insert(path, ());
        }
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> FsResult<()> {
        self.check_writable()?;
        let (_, from) = self.child_path(parent, name)?;
        let (_, to) = self.child_path(new_parent, new_name)?;
        let src = self.resolve(&from).await?;
        let dst = match self.resolve(&to).await {
            Ok(ino) => Some(ino),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if from == to {
            return Ok(());
        }
        if dst.is_some() && no_replace {
            return Err(FsError::Exists);
        }
        let (kind, local_only, staged, object) = {
            let t = self.inodes.lock().unwrap();
            let i = t.get(src).ok_or(FsError::NotFound)?;
            (i.kind, i.local_only, i.staged.clone(), i.object.clone())
        };
        let dst_kind = match dst {
            Some(d) => Some(self.path_of(d)?.1),
            None => None,
        };
        match (kind, dst_kind) {
            (Kind::Dir, Some(Kind::File)) => return Err(FsError::NotDir),
            (Kind::File, Some(Kind::Dir)) => return Err(FsError::IsDir),
            (Kind::Dir, Some(Kind::Dir)) if !self.dir_is_empty(&to).await? => {
                return Err(FsError::NotEmpty);
            }
            _ => {}
        }
        if kind == Kind::Dir && to.starts_with(&format!("{from}/")) {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        match kind {
            Kind::File => {
                // Wait for an upload of this file to finish, so it lands
                // under the name it had when it started.
                let _guard = match &staged {
                    Some(s) => Some(s.lock.write().await),
                    None => None,
                };
                let local_only = local_only
                    || self
                        .inodes
                        .lock()
                        .unwrap()
                        .get(src)
                        .is_some_and(|i| i.local_only);
                if !local_only {
                    let new = self.store.rename(&from, &to).await?;
                    if let Some(old) = &object {
                        self.cache.rekey(old, &new);
                    }
                    let mut t = self.inodes.lock().unwrap();
                    t.rename(&from, &to);
                    if let Some(i) = t.get_mut(src)
                        && i.staged.is_none()
                    {
                        i.object = Some(new);
                    }
                } else {
                    self.inodes.lock().unwrap().rename(&from, &to);
                }
            }
            Kind::Dir => {
                self.store.rename_dir(&from, &to).await?;
                self.inodes.lock().unwrap().rename(&from, &to);
                // Every listing below the old name is stale now.
                self.listings.invalidate_all();
            }
        }
        self.invalidate(&from);
        self.invalidate(&to);
        if self.caching() {
            self.missing.insert(from, ());
        }
        Ok(())
    }
}
