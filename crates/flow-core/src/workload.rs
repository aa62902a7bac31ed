//! The workload a flow belongs to when flowtrack watches a whole host
//! (`watch --all`): its socket's cgroup v2 path, and the container that
//! path names, if it follows a container engine's naming.

use std::sync::Arc;

/// The cgroup a flow's socket was made in, as a path below the cgroup v2
/// root (`/system.slice/docker-0123….scope`), and the id of the container
/// that cgroup is, when its name says so ([`container_id`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Workload {
    /// The cgroup's path below the cgroup v2 root, starting with `/`.
    pub cgroup: Arc<str>,
    /// The container id the path names.
    pub container: Option<Arc<str>>,
}

impl Workload {
    /// The workload of cgroup `path` (below the root, starting with `/`),
    /// with the container its name gives.
    ///
    /// ```
    /// use flow_core::workload::Workload;
    /// let id = "a".repeat(64);
    /// let workload = Workload::new(format!("/system.slice/docker-{id}.scope"));
    /// assert_eq!(workload.container.as_deref(), Some(id.as_str()));
    /// assert_eq!(Workload::new("/user.slice").container, None);
    /// ```
    #[must_use]
    pub fn new(path: impl Into<Arc<str>>) -> Self {
        let cgroup = path.into();
        let container = container_id(&cgroup).map(Arc::from);
        Self { cgroup, container }
    }
}

/// The prefixes container engines give a container's cgroup (systemd
/// driver: `PREFIX<id>.scope`): docker, containerd (Kubernetes' CRI),
/// CRI-O and podman.
const ENGINE_PREFIXES: [&str; 4] = ["docker-", "cri-containerd-", "crio-", "libpod-"];

/// The length of a container id: 32 bytes in hex (docker, containerd,
/// CRI-O and podman all make them so).
const ID_LEN: usize = 64;

/// The container id a cgroup path names, the innermost one when several
/// components look like one: a component `docker-ID.scope`,
/// `cri-containerd-ID.scope`, `crio-ID.scope` or `libpod-ID.scope`
/// (systemd cgroup driver), or a bare `ID` (cgroupfs driver:
/// `/docker/ID`, `/kubepods/burstable/podUID/ID`,
/// `/libpod_parent/libpod-ID`). An ID is 64 lowercase hex digits;
/// anything else (`crio-conmon-ID.scope` is CRI-O's monitor, not the
/// container) names none.
///
/// ```
/// use flow_core::workload::container_id;
/// let id = "0123456789abcdef".repeat(4);
/// let kubepods = format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope");
/// assert_eq!(container_id(&kubepods), Some(id.as_str()));
/// assert_eq!(container_id(&format!("/docker/{id}")), Some(id.as_str()));
/// assert_eq!(container_id("/system.slice/sshd.service"), None);
/// ```
#[must_use]
pub fn container_id(path: &str) -> Option<&str> {
    path.rsplit('/').find_map(|component| {
        let name = component.strip_suffix(".scope").unwrap_or(component);
        let id = ENGINE_PREFIXES
            .iter()
            .find_map(|prefix| name.strip_prefix(prefix))
            .unwrap_or(name);
        is_container_id(id).then_some(id)
    })
}

/// 64 lowercase hex digits.
fn is_container_id(text: &str) -> bool {
    text.len() == ID_LEN
        && text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> String {
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned()
    }

    #[test]
    fn each_engines_naming_gives_the_id() {
        let id = id();
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/docker/{id}"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{id}.scope"
            ),
            format!("/kubepods/besteffort/pod7c2a/{id}"),
            format!("/kubepods.slice/kubepods-pod2.slice/crio-{id}.scope"),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/libpod_parent/libpod-{id}"),
        ] {
            assert_eq!(container_id(&path), Some(id.as_str()), "{path}");
        }
    }

    #[test]
    fn other_cgroups_name_no_container() {
        let id = id();
        for path in [
            "/".to_owned(),
            String::new(),
            "/user.slice/user-1000.slice/session-2.scope".to_owned(),
            format!("/kubepods.slice/crio-conmon-{id}.scope"),
            format!("/docker/{}", &id[1..]),
            format!("/docker/{}", id.to_uppercase()),
            format!("/system.slice/docker-{id}x.scope"),
        ] {
            assert_eq!(container_id(&path), None, "{path}");
        }
    }

    #[test]
    fn the_innermost_container_is_taken() {
        let outer = id();
        let inner = "1".repeat(64);
        let path = format!("/docker/{outer}/docker/{inner}");
        assert_eq!(container_id(&path), Some(inner.as_str()));
    }

    proptest! {
        #[test]
        fn any_path_is_safe_and_a_found_id_is_in_it(path in "[/a-f0-9.a-z-]{0,200}") {
            if let Some(id) = container_id(&path) {
                prop_assert!(path.contains(id));
                prop_assert!(is_container_id(id));
            }
        }

        #[test]
        fn any_id_under_any_prefix_is_found(
            digits in "[0-9a-f]{64}",
            prefix in prop::sample::select(vec!["docker-", "cri-containerd-", "crio-", "libpod-", ""]),
            parent in "(/[a-z.-]{1,20}){0,3}",
        ) {
            let path = format!("{parent}/{prefix}{digits}.scope");
            prop_assert_eq!(container_id(&path), Some(digits.as_str()));
        }
    }
}
