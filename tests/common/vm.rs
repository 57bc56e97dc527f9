//! A real VM for the serve tests: QEMU (TCG) boots Debian's kernel with the
//! initramfs from `scripts/vm-kit.sh`, whose init mounts the vhost-user
//! disk as /dev/vda and reports on the serial console.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::imagegen::{Kind, Oracle};

/// The kernel and initramfs directory (built once, cached).
pub fn kit() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/vm-kit.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run vm-kit.sh");
    assert!(
        out.status.success(),
        "vm-kit.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Machine {
    /// q35 with a vhost-user-blk-pci device.
    Q35,
    /// microvm with a virtio-mmio vhost-user-blk device and qboot.
    Microvm,
}

pub struct Vm {
    pub machine: Machine,
    pub cpus: usize,
    pub queues: usize,
    /// `ro` or `rw`.
    pub mount: &'static str,
    /// The filesystem type the init mounts /dev/vda as.
    pub fs: &'static str,
    /// The init's action: `tree`, `write:TEXT`, `cat`, `boot`.
    pub action: String,
    /// Boot from this image file (`-drive format=FORMAT`, read-only,
    /// virtio-blk-pci) instead of the vhost-user socket.
    pub drive: Option<(PathBuf, &'static str)>,
    /// Reconnect to the socket when the server goes away
    /// (`reconnect-ms=1000`).
    pub reconnect: bool,
}

impl Vm {
    pub fn new(action: &str) -> Vm {
        Vm {
            machine: Machine::Q35,
            cpus: 1,
            queues: 1,
            mount: "ro",
            fs: "ext4",
            action: action.to_string(),
            drive: None,
            reconnect: false,
        }
    }

    /// The QEMU command line for `socket`.
    pub fn command(&self, socket: &Path, initramfs: &str) -> Command {
        let kit = kit();
        let mut c = Command::new("qemu-system-x86_64");
        let machine = match self.machine {
            Machine::Q35 => "q35,accel=tcg,memory-backend=mem",
            Machine::Microvm => "microvm,accel=tcg,memory-backend=mem",
        };
        c.args(["-machine", machine, "-cpu", "max", "-m", "512"])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio", "-no-reboot"]);
        if let Some((file, format)) = &self.drive {
            c.args([
                "-drive",
                &format!(
                    "file={},format={format},if=none,id=d0,readonly=on",
                    file.display()
                ),
            ])
            .args(["-device", "virtio-blk-pci,drive=d0"]);
        } else {
            c.args([
                "-chardev",
                &format!(
                    "socket,id=c0,path={}{}",
                    socket.display(),
                    if self.reconnect {
                        ",reconnect-ms=1000"
                    } else {
                        ""
                    }
                ),
            ]);
        }
        match self.machine {
            _ if self.drive.is_some() => {}
            Machine::Q35 => {
                c.args([
                    "-device",
                    &format!("vhost-user-blk-pci,chardev=c0,num-queues={}", self.queues),
                ]);
            }
            Machine::Microvm => {
                c.args(["-global", "virtio-mmio.force-legacy=false"])
                    .args(["-bios", "/usr/share/qemu/qboot.rom"])
                    .args([
                        "-device",
                        &format!("vhost-user-blk,chardev=c0,num-queues={}", self.queues),
                    ]);
            }
        }
        c.arg("-kernel")
            .arg(kit.join("vmlinuz"))
            .arg("-initrd")
            .arg(kit.join(initramfs))
            .arg("-append")
            .arg(format!(
                // No `quiet`: when a boot hangs, the console shows where.
                "console=ttyS0 panic=-1 ocidisk.mount={} ocidisk.fs={} ocidisk.action={}{}",
                self.mount,
                self.fs,
                self.action,
                // microvm has no HPET or PM timer: under TCG the kernel can
                // fail to calibrate the TSC against the PIT ("Unable to
                // calibrate against PIT") and then hang calibrating its
                // delay loop, before init; `notsc` alone still ran that
                // calibration and hung 2 of 13 boots here. A
                // given TSC frequency skips every PIT measurement (the
                // delay loop is then computed, not measured), and `notsc`
                // keeps the clock off the TSC.
                if self.machine == Machine::Microvm {
                    " notsc tsc_early_khz=2000000"
                } else {
                    ""
                }
            ));
        c
    }

    /// Boot, wait for the init to finish (at most `timeout`), return the
    /// serial console output.
    pub fn run(&self, socket: &Path, timeout: Duration) -> String {
        let (status, out, err) =
            run_qemu(&mut self.command(socket, "initramfs.cpio"), timeout, None);
        assert!(
            status.is_some(),
            "the VM did not power off within {timeout:?}; console:\n{out}\nqemu stderr:\n{err}"
        );
        assert!(
            out.contains("OCIDISK-DONE rc=0"),
            "the guest init failed ({status:?}); console:\n{out}\nqemu stderr:\n{err}"
        );
        out
    }
}

/// Something to do once the console shows a line containing a text.
pub type Trigger<'a> = (&'static str, Box<dyn FnOnce() + Send + 'a>);

/// Run QEMU (`cmd`, its serial console on stdout) until it exits, at most
/// `timeout`: (exit status or `None` when killed at the timeout, console,
/// stderr). One VM at a time: TCG guests are CPU-bound and the machine
/// has two cores; a starved guest makes timing-sensitive boots flaky.
pub fn run_qemu<'a>(
    cmd: &mut Command,
    timeout: Duration,
    trigger: Option<Trigger<'a>>,
) -> (Option<std::process::ExitStatus>, String, String) {
    run_qemu_with(cmd, timeout, trigger.into_iter().collect())
}

/// [`run_qemu`] with several triggers, each fired once, in order: the
/// second is looked for after the first has fired. Each runs on a thread of
/// its own while the console is still read (a guest writing to a console
/// nobody reads stops).
pub fn run_qemu_with<'a>(
    cmd: &mut Command,
    timeout: Duration,
    triggers: Vec<Trigger<'a>>,
) -> (Option<std::process::ExitStatus>, String, String) {
    static ONE_VM: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-x86_64");
    let out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    std::thread::scope(|scope| {
        let t_out = scope.spawn(move || {
            use std::io::BufRead;
            let mut triggers = triggers.into_iter();
            let mut next = triggers.next();
            let mut v = Vec::new();
            let mut r = std::io::BufReader::new(out);
            loop {
                let start = v.len();
                match r.read_until(b'\n', &mut v) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let hit = next
                    .as_ref()
                    .is_some_and(|(text, _)| String::from_utf8_lossy(&v[start..]).contains(text));
                if hit && let Some((_, action)) = next.take() {
                    scope.spawn(action);
                    next = triggers.next();
                }
            }
            v
        });
        let t_err = scope.spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = String::from_utf8_lossy(&t_out.join().unwrap()).replace('\r', "");
        let err = String::from_utf8_lossy(&t_err.join().unwrap()).to_string();
        (status, out, err)
    })
}

/// The lines between `OCIDISK-<what>-BEGIN` and `-END`.
pub fn section<'a>(console: &'a str, what: &str) -> Vec<&'a str> {
    let begin = format!("OCIDISK-{what}-BEGIN");
    let end = format!("OCIDISK-{what}-END");
    console
        .lines()
        .skip_while(|l| *l != begin)
        .skip(1)
        .take_while(|l| *l != end)
        .collect()
}

/// Compare the guest's tree listing with the oracle (plus `lost+found`);
/// returns the differences.
pub fn compare_listing(listing: &[&str], oracle: &Oracle) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for line in listing {
        // PATH KIND MODE UID GID [REST]; PATH may hold spaces, so the
        // fields are found from the right for each kind.
        let (path, kind, fields) = match parse_line(line) {
            Some(p) => p,
            None => {
                diffs.push(format!("unparsable guest line: {line:?}"));
                continue;
            }
        };
        let path = match path.strip_prefix('.') {
            Some("") => "/".to_string(),
            Some(p) => p.to_string(),
            None => path.to_string(),
        };
        if path == "/lost+found" {
            continue;
        }
        seen.insert(path.clone());
        let Some(want) = oracle.get(&path) else {
            diffs.push(format!("{path}: in the guest, not in the image"));
            continue;
        };
        let mode = u32::from_str_radix(fields[0], 8).unwrap_or(u32::MAX);
        let (uid, gid) = (fields[1].parse::<u32>(), fields[2].parse::<u32>());
        let kind_ok = matches!(
            (kind, &want.kind),
            ("f", Kind::File)
                | ("d", Kind::Dir)
                | ("l", Kind::Symlink)
                | ("c", Kind::Char)
                | ("b", Kind::Block)
                | ("p", Kind::Fifo)
        );
        if !kind_ok {
            diffs.push(format!("{path}: kind {kind}, want {:?}", want.kind));
            continue;
        }
        if kind != "l" && mode != want.mode {
            diffs.push(format!("{path}: mode {mode:o}, want {:o}", want.mode));
        }
        if uid != Ok(want.uid) || gid != Ok(want.gid) {
            diffs.push(format!(
                "{path}: owner {}:{}, want {}:{}",
                fields[1], fields[2], want.uid, want.gid
            ));
        }
        match kind {
            "f" if fields[3].parse::<u64>() != Ok(want.size)
                || Some(fields[4]) != want.sha256.as_deref() =>
            {
                diffs.push(format!(
                    "{path}: size {} sha256 {}, want {} {:?}",
                    fields[3], fields[4], want.size, want.sha256
                ));
            }
            "l" if Some(fields[3]) != want.target.as_deref() => {
                diffs.push(format!(
                    "{path}: target {}, want {:?}",
                    fields[3], want.target
                ));
            }
            "c" | "b" => {
                let dev = (
                    u32::from_str_radix(fields[3], 16).unwrap_or(u32::MAX),
                    u32::from_str_radix(fields[4], 16).unwrap_or(u32::MAX),
                );
                if Some(dev) != want.rdev {
                    diffs.push(format!("{path}: device {dev:?}, want {:?}", want.rdev));
                }
            }
            _ => {}
        }
    }
    for path in oracle.entries.keys() {
        if !seen.contains(path) {
            diffs.push(format!("{path}: in the image, not seen by the guest"));
        }
    }
    diffs
}

fn parse_line(line: &str) -> Option<(&str, &str, Vec<&str>)> {
    if let Some((left, target)) = line.split_once(" -> ") {
        let mut it = left.rsplitn(5, ' ');
        let (gid, uid, mode, kind, path) =
            (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
        return (kind == "l").then(|| (path, kind, vec![mode, uid, gid, target]));
    }
    for (kind, extra) in [("f", 2), ("c", 2), ("b", 2), ("p", 2), ("d", 0)] {
        let n = 4 + extra;
        let parts: Vec<&str> = line.rsplitn(n + 1, ' ').collect();
        if parts.len() == n + 1 && parts[n - 1] == kind {
            let mut fields: Vec<&str> = parts[..n - 1].iter().rev().copied().collect();
            if kind == "p" {
                fields.truncate(3);
            }
            return Some((parts[n], kind, fields));
        }
    }
    None
}
