//! Loading the object and attaching its programs to a cgroup.

use std::fs::File;
use std::io;

use aya::programs::{
    BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, ProgramError,
};
use aya::{Btf, Ebpf, EbpfError, EbpfLoader};
use flow_core::FlowError;
use flow_ebpf_common::{
    CAPTURE_NAMES_GLOBAL, EGRESS_PROGRAM, ENFORCE_GLOBAL, EVENTS_MAP, EXEC_PROGRAM, FLOWS_MAP,
    FORK_PROGRAM, INGRESS_PROGRAM, OWN_SLOT_CPUS_GLOBAL, SCOPE_CGROUP_ID_GLOBAL,
    SCOPE_CGROUP_LEVEL_GLOBAL, SOCK_CREATE_PROGRAM, SOCK_RELEASE_PROGRAM,
};

use crate::checkpoint::Checkpoint;
use crate::{enforce, kernel_offsets};

use crate::{BACKEND_NAME, EbpfConfig};

/// The kernel-side object, built from `ebpf/` or taken from `prebuilt/`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowtrack.bpf.o"));

/// The loaded programs, attached to a cgroup. Dropping it detaches them
/// (the links are file descriptors this process owns: a crash releases
/// them too).
pub(crate) struct Attached {
    pub(crate) ebpf: Ebpf,
    /// The checkpoint iterator, loaded when interim updates are asked for.
    pub(crate) checkpoint: Option<Checkpoint>,
    /// Each attached program's name and kernel id.
    programs: Vec<(&'static str, u32)>,
}

impl Attached {
    /// Loads the object with `config`'s sizes and attaches egress, ingress
    /// and sock_release to `config.cgroup`; with a policy to enforce, fills
    /// its maps first and attaches the socket-address hooks last (any
    /// failure fails the whole: enforcement is in place, or nothing is).
    pub(crate) fn load_and_attach(config: &EbpfConfig) -> Result<Self, FlowError> {
        if let Some(why) = config
            .policy
            .as_deref()
            .and_then(flow_policy::Policy::enforce_refusal)
        {
            return Err(FlowError::unavailable(BACKEND_NAME, why));
        }
        let cgroup = File::open(&config.cgroup).map_err(|error| {
            let what = format!("cgroup {}", config.cgroup.display());
            match error.kind() {
                io::ErrorKind::NotFound => FlowError::unavailable(
                    BACKEND_NAME,
                    format!("{what} does not exist: give the path of a cgroup v2 directory"),
                ),
                _ => FlowError::io(format!("opening {what}"), error),
            }
        })?;
        let scope = flow_cgroup::identity(&config.cgroup).map_err(|error| {
            FlowError::unavailable(
                BACKEND_NAME,
                format!(
                    "cgroup {}: {error}: give the path of a cgroup v2 directory",
                    config.cgroup.display()
                ),
            )
        })?;
        // Without the kernel's offsets, processes are still attributed
        // (pid, command name, user), only without their program.
        let offsets = if config.processes {
            kernel_offsets::resolve()
                .inspect_err(|why| {
                    tracing::warn!("processes' programs and command lines will be unknown: {why}");
                })
                .unwrap_or_default()
        } else {
            kernel_offsets::Offsets::default()
        };
        let capture_names = u32::from(config.names);
        let enforcing = enforce::global(config.policy.as_deref());
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(EVENTS_MAP, config.ring_bytes)
            .map_max_entries(FLOWS_MAP, config.flow_table_entries)
            .override_global(OWN_SLOT_CPUS_GLOBAL, &config.own_slot_cpus, true)
            .override_global(CAPTURE_NAMES_GLOBAL, &capture_names, true)
            .override_global(ENFORCE_GLOBAL, &enforcing, true)
            .override_global(SCOPE_CGROUP_ID_GLOBAL, &scope.id, true)
            .override_global(SCOPE_CGROUP_LEVEL_GLOBAL, &scope.level, true);
        for (global, offset) in &offsets {
            loader.override_global(global, offset, true);
        }
        let mut ebpf = loader.load(OBJECT).map_err(load_error)?;
        if let Some(policy) = &config.policy {
            enforce::fill_maps(&mut ebpf, policy)?;
        }
        let checkpoint = match config.active_timeout {
            Some(_) => Some(Checkpoint::load(&mut ebpf).map_err(|why| {
                FlowError::unavailable(
                    BACKEND_NAME,
                    format!(
                        "interim updates of long flows (an active timeout) need its checkpoint \
                         iterator, which cannot load: {why}"
                    ),
                )
            })?),
            None => None,
        };
        // Before the cgroup's programs: once they are attached, the run's
        // command may start, and its own exec must be recorded.
        if !offsets.is_empty()
            && let Err(why) = attach_process_tracing(&mut ebpf)
        {
            tracing::warn!("processes' programs and command lines will be unknown: {why}");
        }
        let mut programs = Vec::new();
        for (name, attach_type) in [
            (EGRESS_PROGRAM, CgroupSkbAttachType::Egress),
            (INGRESS_PROGRAM, CgroupSkbAttachType::Ingress),
        ] {
            let program: &mut CgroupSkb = program(&mut ebpf, name)?;
            program
                .load()
                .map_err(|e| program_error(name, "loading", e))?;
            program
                .attach(&cgroup, attach_type, CgroupAttachMode::Single)
                .map_err(|e| program_error(name, "attaching", e))?;
            programs.push((name, program_id(name, program.info())?));
        }
        let sock_programs: &[&str] = if config.processes {
            &[SOCK_RELEASE_PROGRAM, SOCK_CREATE_PROGRAM]
        } else {
            &[SOCK_RELEASE_PROGRAM]
        };
        for &name in sock_programs {
            let program: &mut CgroupSock = program(&mut ebpf, name)?;
            program
                .load()
                .map_err(|e| program_error(name, "loading", e))?;
            program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|e| program_error(name, "attaching", e))?;
            programs.push((name, program_id(name, program.info())?));
        }
        if config.policy.is_some() {
            let hooks_to = if config.fail_enforcement {
                // A directory that is no cgroup: the kernel refuses the
                // attachment, as it would refuse a real one it cannot take.
                File::open("/").map_err(|error| FlowError::io("opening /", error))?
            } else {
                cgroup
            };
            programs.extend(enforce::attach_hooks(&mut ebpf, &hooks_to)?);
        }
        Ok(Self {
            ebpf,
            checkpoint,
            programs,
        })
    }

    /// A program whose link someone detached from the cgroup (with
    /// `BPF_LINK_DETACH`, e.g. `bpftool link detach`): its link, still open
    /// here, then shows `cgroup_id: 0` in its fdinfo.
    pub(crate) fn detached_program(&self) -> Option<&'static str> {
        let links = link_fdinfos();
        self.programs.iter().find_map(|(name, id)| {
            links
                .iter()
                .find(|link| link.program_id == *id)
                .is_some_and(|link| link.cgroup_id == 0)
                .then_some(*name)
        })
    }
}

/// Attaches the programs that record what the scope's processes execute
/// and fork (`tp_btf`: they need the kernel's BTF). They are not cgroup
/// links: their links are only this process's descriptors.
fn attach_process_tracing(ebpf: &mut Ebpf) -> Result<(), String> {
    let btf = Btf::from_sys_fs().map_err(|error| format!("the kernel's BTF: {error}"))?;
    for (name, tracepoint) in [
        (EXEC_PROGRAM, "sched_process_exec"),
        (FORK_PROGRAM, "sched_process_fork"),
    ] {
        let program: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("the eBPF object has no program {name}"))?
            .try_into()
            .map_err(|error| format!("{name}: {error}"))?;
        program
            .load(tracepoint, &btf)
            .map_err(|error| format!("loading {name}: {error}"))?;
        program
            .attach()
            .map_err(|error| format!("attaching {name}: {error}"))?;
    }
    Ok(())
}

/// A BPF link of this process, from /proc/self/fdinfo.
struct LinkFdinfo {
    program_id: u32,
    cgroup_id: u64,
}

/// This process's cgroup BPF links (read from procfs: aya does not expose
/// a link's cgroup).
fn link_fdinfos() -> Vec<LinkFdinfo> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf_link")
        })
        .filter_map(|fd| {
            let info = std::fs::read_to_string(
                std::path::Path::new("/proc/self/fdinfo").join(fd.file_name()),
            )
            .ok()?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
            };
            Some(LinkFdinfo {
                program_id: u32::try_from(field("prog_id:")?).ok()?,
                cgroup_id: field("cgroup_id:")?,
            })
        })
        .collect()
}

/// The kernel id of a loaded program.
pub(crate) fn program_id(
    name: &str,
    info: Result<aya::programs::ProgramInfo, ProgramError>,
) -> Result<u32, FlowError> {
    info.map(|info| info.id())
        .map_err(|e| program_error(name, "reading the id of", e))
}

pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, FlowError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or_else(|| {
        FlowError::unavailable(
            BACKEND_NAME,
            format!("the eBPF object has no program {name}"),
        )
    })?;
    program
        .try_into()
        .map_err(|e| program_error(name, "finding", e))
}

fn is_permission(error: &io::Error) -> bool {
    // EPERM; the verifier rejects with EACCES or EINVAL, which are not about privilege.
    error.raw_os_error() == Some(libc::EPERM)
}

fn permission_denied(action: &str) -> FlowError {
    FlowError::PermissionDenied {
        action: action.to_owned(),
        needs: "CAP_BPF and CAP_NET_ADMIN".to_owned(),
    }
}

/// The system's error, with what to do about it where that is known: the
/// errors a load or attach meets for want of resources.
fn explain(error: &io::Error) -> String {
    let remedy = match error.raw_os_error() {
        Some(libc::EMFILE) => Some(
            "flowtrack has no file descriptor left for it: raise the open-file limit (ulimit -n)",
        ),
        Some(libc::ENFILE) => {
            Some("the system has no file descriptor left: close some, or raise fs.file-max")
        }
        Some(libc::ENOMEM) => Some(
            "the kernel could not allocate its memory: lower --flow-table-entries or \
             --ring-bytes, or raise the locked-memory limit (ulimit -l) on kernels before 5.11",
        ),
        _ => None,
    };
    match remedy {
        Some(remedy) => format!("{error}: {remedy}"),
        None => error.to_string(),
    }
}

/// The system's error at the root of `error`, if there is one.
fn io_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cause = error.source();
    }
    None
}

fn load_error(error: EbpfError) -> FlowError {
    let cause = io_cause(&error);
    if let EbpfError::MapError(aya::maps::MapError::CreateError { .. }) = &error
        && cause.is_some_and(is_permission)
    {
        return permission_denied("creating eBPF maps");
    }
    let reason = match cause {
        Some(io) => format!("{error}: {}", explain(io)),
        None => error.to_string(),
    };
    FlowError::unavailable(
        BACKEND_NAME,
        format!("cannot load the eBPF object: {reason}"),
    )
}

pub(crate) fn program_error(name: &str, action: &str, error: ProgramError) -> FlowError {
    let cause = io_cause(&error);
    match &error {
        _ if cause.is_some_and(is_permission) => {
            permission_denied(&format!("{action} the eBPF program {name}"))
        }
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } if matches!(io_error.raw_os_error(), Some(libc::EACCES | libc::EINVAL)) => {
            FlowError::unavailable(
                BACKEND_NAME,
                format!(
                    "the kernel's verifier rejected {name} ({io_error}); its log ends: {}",
                    log_tail(&verifier_log.to_string())
                ),
            )
        }
        ProgramError::SyscallError(syscall)
            if syscall.io_error.raw_os_error() == Some(libc::EINVAL) =>
        {
            FlowError::unavailable(
                BACKEND_NAME,
                format!(
                    "{action} {name} failed with EINVAL: is the path a cgroup v2 directory, and does the kernel support cgroup BPF links (5.7+)?"
                ),
            )
        }
        _ => {
            let reason = match cause {
                Some(io) => format!("{error}: {}", explain(io)),
                None => error.to_string(),
            };
            FlowError::unavailable(BACKEND_NAME, format!("{action} {name} failed: {reason}"))
        }
    }
}

/// The last lines of a verifier log, joined on one line.
fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_error(errno: i32) -> EbpfError {
        EbpfError::MapError(aya::maps::MapError::CreateError {
            name: "COUNTERS".into(),
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn running_out_of_descriptors_says_so_and_what_to_do() {
        let message = load_error(map_error(libc::EMFILE)).to_string();
        assert!(
            message.contains("failed to create map `COUNTERS`"),
            "{message}"
        );
        assert!(message.contains("Too many open files"), "{message}");
        assert!(message.contains("ulimit -n"), "{message}");
        let message = program_error(
            EGRESS_PROGRAM,
            "attaching",
            ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_link_create",
                io_error: io::Error::from_raw_os_error(libc::EMFILE),
            }),
        )
        .to_string();
        assert!(message.contains("Too many open files"), "{message}");
    }

    #[test]
    fn out_of_memory_names_the_sizes() {
        let message = load_error(map_error(libc::ENOMEM)).to_string();
        assert!(message.contains("--flow-table-entries"), "{message}");
    }

    #[test]
    fn a_missing_privilege_is_named() {
        let error = load_error(map_error(libc::EPERM));
        assert!(
            matches!(error, FlowError::PermissionDenied { .. }),
            "{error}"
        );
    }
}
