//! `flowtrack run --user`: the command runs as another user, in a session
//! of its own, with that user's environment, and cannot reach the
//! terminal flowtrack was started from.

use std::io::Read;
use std::process::{Command, Stdio};

use flowtrack_kernel_tests::privileged;

mod common;

use common::FLOWTRACK;

/// Pushes `echo INJECTED` into the input of every terminal the command
/// can reach (its standard descriptors, and /dev/tty) with `TIOCSTI`, as
/// a hostile workload would, to have the shell that started flowtrack run
/// it as root; and prints how many pseudoterminal masters it holds.
const INJECT: &str = "import fcntl,os,termios\n\
print('MASTERS:%d' % sum(os.readlink('/proc/self/fd/'+f)=='/dev/ptmx' for f in os.listdir('/proc/self/fd') if os.path.exists('/proc/self/fd/'+f)))\n\
fds=[0,1,2]\n\
try:\n    fds.append(os.open('/dev/tty',os.O_RDWR))\nexcept OSError:\n    pass\n\
for fd in fds:\n    try:\n        [fcntl.ioctl(fd,termios.TIOCSTI,bytes([c])) for c in b'echo INJECTED\\n']\n    except OSError:\n        pass\n";

#[test]
fn a_command_run_as_another_user_cannot_type_into_flowtracks_terminal() {
    if !privileged("a_command_run_as_another_user_cannot_type_into_flowtracks_terminal") {
        return;
    }
    // `script` gives flowtrack a terminal, as a shell would; after flowtrack
    // exits, the shell reads whatever was typed into that terminal.
    let shell = format!(
        "{FLOWTRACK} run --backend ebpf --summary off --user nobody -- python3 -c \"$INJECT\"; \
         read -t 2 line; echo \"READ:[$line]\""
    );
    // script's input stays open while it runs: at the end of its input,
    // script would end the terminal's input, and `read` would read nothing
    // whatever was typed.
    let mut script = Command::new("script")
        .args(["--quiet", "--return", "--command", &shell, "/dev/null"])
        .env("SHELL", "/bin/bash")
        .env("INJECT", INJECT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script runs");
    let input = script.stdin.take();
    let mut typescript = String::new();
    script
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut typescript)
        .unwrap();
    let status = script.wait().unwrap();
    drop(input);
    assert!(status.success(), "{typescript}");
    assert!(
        typescript.contains("READ:[]"),
        "the command typed into flowtrack's terminal: {typescript}"
    );
    assert!(
        typescript.contains("MASTERS:0"),
        "the command holds its terminal's master: {typescript}"
    );
}

#[test]
fn a_command_run_as_another_user_gets_its_session_and_environment() {
    if !privileged("a_command_run_as_another_user_gets_its_session_and_environment") {
        return;
    }
    let output = Command::new(FLOWTRACK)
        .args(["run", "--backend", "ebpf", "--summary", "off", "--user", "nobody", "--"])
        .args([
            "python3",
            "-c",
            "import os\n\
             print(os.getsid(0) == os.getpid(), os.environ.get('HOME'), os.environ.get('USER'), os.environ.get('LOGNAME'))\n\
             try:\n    open('/dev/tty')\n    print('tty')\nexcept OSError:\n    print('no tty')",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let home = nix_home_of_nobody();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("True {home} nobody nobody\nno tty\n"),
        "a session of its own, nobody's HOME, USER and LOGNAME, no controlling terminal"
    );
}

/// nobody's home directory, from the passwd database.
fn nix_home_of_nobody() -> String {
    let passwd = Command::new("getent")
        .args(["passwd", "nobody"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&passwd.stdout)
        .trim()
        .split(':')
        .nth(5)
        .unwrap()
        .to_owned()
}
