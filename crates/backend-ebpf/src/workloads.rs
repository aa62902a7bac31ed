//! Which cgroup a flow's socket is in (`watch --all`), from the cgroup id
//! the kernel recorded with the flow's opening. A cgroup v2 directory's
//! inode number is its id, so ids are found by walking the hierarchy: once
//! at the start, and again when an unknown id comes. Cgroup ids are never
//! reused, so an id a fresh walk does not find belongs to a cgroup already
//! removed: it is remembered as gone and costs no further walk.

use std::collections::HashMap;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flow_core::workload::Workload;
use hashlink::LruCache;

/// Removed cgroups' ids remembered, so that a storm of flows from one of
/// them walks the hierarchy once.
const GONE: usize = 1024;

/// Cgroup ids to workloads, below one cgroup v2 mount.
#[derive(Debug)]
pub(crate) struct Workloads {
    mount: PathBuf,
    known: HashMap<u64, Arc<Workload>>,
    gone: LruCache<u64, ()>,
}

impl Workloads {
    /// The workloads of the cgroup v2 hierarchy mounted at `mount`.
    pub(crate) fn new(mount: PathBuf) -> Self {
        let mut workloads = Self {
            mount,
            known: HashMap::new(),
            gone: LruCache::new(GONE),
        };
        workloads.walk();
        workloads
    }

    /// The workload of cgroup `id`; `None` for 0 (a packet without a
    /// socket) and for a cgroup removed before it was seen.
    pub(crate) fn of(&mut self, id: u64) -> Option<Arc<Workload>> {
        if id == 0 || self.gone.contains_key(&id) {
            return None;
        }
        if let Some(workload) = self.known.get(&id) {
            return Some(Arc::clone(workload));
        }
        self.walk();
        let found = self.known.get(&id).cloned();
        if found.is_none() {
            self.gone.insert(id, ());
        }
        found
    }

    /// Reads every cgroup's id and path again.
    fn walk(&mut self) {
        self.known.clear();
        let mut stack = vec![(self.mount.clone(), "/".to_owned())];
        if let Ok(root) = std::fs::metadata(&self.mount) {
            let id = std::os::unix::fs::MetadataExt::ino(&root);
            self.known.insert(id, Arc::new(Workload::new("/")));
        }
        while let Some((dir, path)) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    continue;
                }
                // A name that is not UTF-8 is shown with U+FFFD in its place.
                let child = child_path(&path, &entry.file_name().to_string_lossy());
                self.known
                    .insert(entry.ino(), Arc::new(Workload::new(child.as_str())));
                stack.push((entry.path(), child));
            }
        }
    }
}

/// `name` below the cgroup path `parent`.
fn child_path(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The cgroup v2 mount `cgroup` is below.
pub(crate) fn mount_of(cgroup: &Path) -> PathBuf {
    flow_cgroup::cgroup2_mount().unwrap_or_else(|_| cgroup.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_below_the_root() {
        assert_eq!(child_path("/", "system.slice"), "/system.slice");
        assert_eq!(child_path("/a", "b"), "/a/b");
    }

    #[test]
    fn a_directory_tree_is_walked_by_inode() {
        // Any directory tree walks as a cgroup hierarchy does.
        let root = tempfile::tempdir().unwrap();
        let id = "ab".repeat(32);
        let container = root.path().join("docker").join(&id);
        std::fs::create_dir_all(&container).unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&container).unwrap());
        let mut workloads = Workloads::new(root.path().to_path_buf());
        let workload = workloads.of(inode).unwrap();
        assert_eq!(workload.cgroup.as_ref(), format!("/docker/{id}"));
        assert_eq!(workload.container.as_deref(), Some(id.as_str()));
        let root_inode =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(root.path()).unwrap());
        assert_eq!(workloads.of(root_inode).unwrap().cgroup.as_ref(), "/");
        assert_eq!(workloads.of(0), None, "no socket");
    }

    #[test]
    fn a_cgroup_made_after_the_start_is_found_and_a_removed_one_walks_once() {
        let root = tempfile::tempdir().unwrap();
        let mut workloads = Workloads::new(root.path().to_path_buf());
        let late = root.path().join("late");
        std::fs::create_dir(&late).unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&late).unwrap());
        assert_eq!(workloads.of(inode).unwrap().cgroup.as_ref(), "/late");
        std::fs::remove_dir(&late).unwrap();
        let gone = inode + 1_000_000;
        assert_eq!(workloads.of(gone), None);
        assert!(workloads.gone.contains_key(&gone), "not walked for again");
    }
}
