//! Where the kernel keeps what the process records read: the byte offsets
//! of `task_struct`, `mm_struct`, `linux_binprm`, … members, found in the
//! running kernel's BTF (`/sys/kernel/btf/vmlinux`) with btfparse and
//! handed to the program as read-only globals. The Rust BPF toolchain has
//! no CO-RE relocations, which would otherwise do this at load time.

use btfparse::{ErrorKind, Offset, Readable, TypeInformation};
use flow_ebpf_common::KERNEL_OFFSETS;

/// The running kernel's BTF.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Each global of [`KERNEL_OFFSETS`] with its value.
pub(crate) type Offsets = Vec<(&'static str, u32)>;

/// The offsets on this kernel.
///
/// # Errors
/// What is missing: the BTF, a structure, or a member (the message names
/// it).
pub(crate) fn resolve() -> Result<Offsets, String> {
    let btf = std::fs::read(VMLINUX_BTF)
        .map_err(|error| format!("cannot read the kernel's BTF ({VMLINUX_BTF}): {error}"))?;
    let types = TypeInformation::new(&Bytes(&btf))
        .map_err(|error| format!("cannot parse the kernel's BTF: {error:?}"))?;
    KERNEL_OFFSETS
        .iter()
        .map(|&(global, structure, member)| {
            let id = types
                .id_of(structure)
                .ok_or_else(|| format!("the kernel's BTF has no struct {structure}"))?;
            match types.offset_of(id, member) {
                Ok((_, Offset::ByteOffset(offset))) => Ok((global, offset)),
                Ok((_, Offset::BitOffsetAndSize(..))) => {
                    Err(format!("{structure}.{member} is a bit field"))
                }
                Err(error) => Err(format!(
                    "the kernel's BTF has no {structure}.{member}: {error:?}"
                )),
            }
        })
        .collect()
}

/// The BTF bytes, as btfparse reads them.
struct Bytes<'a>(&'a [u8]);

impl Readable for Bytes<'_> {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let source = start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| btfparse::Error::new(ErrorKind::EOF, "read past the end of the BTF"))?;
        buffer.copy_from_slice(source);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_kernel_has_every_member() {
        if !std::path::Path::new(super::VMLINUX_BTF).exists() {
            return; // a kernel without BTF: the backend says so when it loads
        }
        let offsets = super::resolve().unwrap();
        eprintln!("{offsets:?}");
        assert_eq!(offsets.len(), super::KERNEL_OFFSETS.len());
        // None of the members read is the first of its structure.
        assert!(offsets.iter().all(|(_, offset)| *offset > 0), "{offsets:?}");
    }
}
