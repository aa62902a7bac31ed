//! Loading the object and attaching its programs to a cgroup.

use std::fs::File;
use std::io;

use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, ProgramError};
use aya::{Ebpf, EbpfError, EbpfLoader};
use flow_core::FlowError;
use flow_ebpf_common::{
    EGRESS_PROGRAM, EVENTS_MAP, FLOWS_MAP, INGRESS_PROGRAM, SOCK_RELEASE_PROGRAM,
};

use crate::{BACKEND_NAME, EbpfConfig};

/// The kernel-side object, built from `ebpf/` or taken from `prebuilt/`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowtrack.bpf.o"));

/// The loaded programs, attached to a cgroup. Dropping it detaches them
/// (the links are file descriptors this process owns: a crash releases
/// them too).
pub(crate) struct Attached {
    pub(crate) ebpf: Ebpf,
}

impl Attached {
    /// Loads the object with `config`'s sizes and attaches egress, ingress
    /// and sock_release to `config.cgroup`.
    pub(crate) fn load_and_attach(config: &EbpfConfig) -> Result<Self, FlowError> {
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
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(EVENTS_MAP, config.ring_bytes)
            .map_max_entries(FLOWS_MAP, config.flow_table_entries)
            .load(OBJECT)
            .map_err(load_error)?;
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
        }
        let release: &mut CgroupSock = program(&mut ebpf, SOCK_RELEASE_PROGRAM)?;
        release
            .load()
            .map_err(|e| program_error(SOCK_RELEASE_PROGRAM, "loading", e))?;
        release
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|e| program_error(SOCK_RELEASE_PROGRAM, "attaching", e))?;
        Ok(Self { ebpf })
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, FlowError>
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
    error.raw_os_error() == Some(1)
}

fn permission_denied(action: &str) -> FlowError {
    FlowError::PermissionDenied {
        action: action.to_owned(),
        needs: "CAP_BPF and CAP_NET_ADMIN".to_owned(),
    }
}

fn load_error(error: EbpfError) -> FlowError {
    match &error {
        EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
            if is_permission(io_error) =>
        {
            permission_denied("creating eBPF maps")
        }
        _ => FlowError::unavailable(
            BACKEND_NAME,
            format!("cannot load the eBPF object: {error}"),
        ),
    }
}

fn program_error(name: &str, action: &str, error: ProgramError) -> FlowError {
    match &error {
        ProgramError::LoadError { io_error, .. } if is_permission(io_error) => {
            permission_denied(&format!("loading the eBPF program {name}"))
        }
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => FlowError::unavailable(
            BACKEND_NAME,
            format!(
                "the kernel's verifier rejected {name} ({io_error}); its log ends: {}",
                log_tail(&verifier_log.to_string())
            ),
        ),
        ProgramError::SyscallError(syscall) if is_permission(&syscall.io_error) => {
            permission_denied(&format!("{action} the eBPF program {name}"))
        }
        ProgramError::SyscallError(syscall) if syscall.io_error.raw_os_error() == Some(22) => {
            FlowError::unavailable(
                BACKEND_NAME,
                format!(
                    "{action} {name} failed with EINVAL: is the path a cgroup v2 directory, and does the kernel support cgroup BPF links (5.7+)?"
                ),
            )
        }
        _ => FlowError::unavailable(BACKEND_NAME, format!("{action} {name} failed: {error}")),
    }
}

/// The last lines of a verifier log, joined on one line.
fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
