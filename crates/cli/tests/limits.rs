//! Sizes the kernel cannot take are refused as the command line is read,
//! whichever backend is chosen, before anything starts (no root needed).

use assert_cmd::Command;

/// `flowtrack ARGS`: refused with usage status 2 and a message naming
/// `flag` and the accepted range.
fn refused(args: &[&str], flag: &str, range: &str) {
    let output = Command::cargo_bin("flowtrack")
        .unwrap()
        .args(args)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid value") && stderr.contains(flag) && stderr.contains(range),
        "{args:?}: {stderr}"
    );
}

#[test]
fn a_netlink_buffer_beyond_1_gib_is_refused() {
    for backend in ["auto", "nflog", "both"] {
        refused(
            &[
                "run",
                "--backend",
                backend,
                "--netlink-buffer",
                "2147483648",
                "--",
                "true",
            ],
            "--netlink-buffer",
            "4096..=1073741824",
        );
    }
    refused(
        &["watch", "--netlink-buffer", "1073741825", "--netns", "1"],
        "--netlink-buffer",
        "4096..=1073741824",
    );
}

#[test]
fn a_flow_table_beyond_8_million_entries_is_refused() {
    for backend in ["auto", "ebpf", "both"] {
        for flows in ["4294967295", "100000000", "8388609"] {
            refused(
                &[
                    "run",
                    "--backend",
                    backend,
                    "--flow-table-entries",
                    flows,
                    "--",
                    "true",
                ],
                "--flow-table-entries",
                "64..=8388608",
            );
        }
    }
    refused(
        &[
            "watch",
            "--flow-table-entries",
            "4294967296",
            "--cgroup",
            "/",
        ],
        "--flow-table-entries",
        "4294967296",
    );
}
