//! `--init`: a disk whose `/.ocidisk/init` boots straight into the image's
//! own process. QEMU (TCG) boots Debian's own kernel and initrd from /boot
//! with `root=/dev/vda init=/.ocidisk/init`; the console shows what the
//! process printed and `ocidisk-init: exit status N`, and QEMU exits by
//! itself. Also: the init is a static ELF on the disk, and a disk without
//! `--init` has no `/.ocidisk`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cli::Ocidisk;
use common::debian;
use common::fscheck::LoopMount;
use common::imagegen::{self, Compression, Content, EntrySpec as E, LayerSpec};
use common::registry::{Registry, run_ok};
use common::serve::Served;
use common::vm::{Trigger, run_qemu};

const BOOT: Duration = Duration::from_secs(300);

/// Debian's kernel and initrd, the newest in /boot.
fn kernel() -> (PathBuf, PathBuf) {
    let mut versions: Vec<String> = std::fs::read_dir("/boot")
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_prefix("vmlinuz-").map(str::to_string)
        })
        .collect();
    versions.sort();
    let v = versions
        .pop()
        .expect("a kernel in /boot (linux-image-amd64)");
    (
        PathBuf::from(format!("/boot/vmlinuz-{v}")),
        PathBuf::from(format!("/boot/initrd.img-{v}")),
    )
}

/// What the VM boots from.
enum Drive<'a> {
    /// A raw image file; `true`: read-only.
    File(&'a Path, bool),
    /// A vhost-user-blk socket (`ocidisk serve`), read-only.
    Socket(&'a Path),
}

/// Boot `drive` with `init=/.ocidisk/init` and `extra` on the kernel
/// command line; the console once QEMU exits by itself.
fn boot_with(drive: Drive, extra: &str, trigger: Option<Trigger>) -> String {
    let (vmlinuz, initrd) = kernel();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-cpu", "max", "-m", "512"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"]);
    let ro = match drive {
        Drive::File(img, ro) => {
            cmd.args(["-machine", "q35,accel=tcg"])
                .arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=virtio{}",
                    img.display(),
                    if ro { ",readonly=on" } else { "" }
                ));
            ro
        }
        Drive::Socket(sock) => {
            cmd.args(["-machine", "q35,accel=tcg,memory-backend=mem"])
                .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
                .arg("-chardev")
                .arg(format!("socket,id=c0,path={}", sock.display()))
                .args(["-device", "vhost-user-blk-pci,chardev=c0"]);
            true
        }
    };
    if let Some(mon) = trigger.as_ref().and(MONITOR.get()) {
        cmd.arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", mon.display()));
    }
    cmd.arg("-kernel").arg(&vmlinuz).arg("-initrd").arg(&initrd);
    cmd.arg("-append").arg(format!(
        "root=/dev/vda {} init=/.ocidisk/init console=ttyS0 panic=-1 {extra}",
        if ro { "ro" } else { "rw" }
    ));
    let (status, console, err) = run_qemu(&mut cmd, BOOT, trigger);
    assert!(
        status.is_some(),
        "the VM did not power off within {BOOT:?}; console:\n{console}\nqemu stderr:\n{err}"
    );
    console
}

fn boot(img: &Path, read_only: bool, extra: &str) -> String {
    boot_with(Drive::File(img, read_only), extra, None)
}

/// The QEMU monitor socket of the test that sends keys.
static MONITOR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// busybox-static's applets this image links.
const APPLETS: [&str; 9] = [
    "sh", "id", "sleep", "grep", "wc", "cat", "echo", "ls", "touch",
];

/// A busybox image: Entrypoint `sh -c`, a Cmd printing what docker would
/// set up, `Env FOO=bar`, `User app` (uid 1000, also in group `extra`),
/// `WorkingDir /work` (not in the image: the init creates it).
fn busybox_image(dir: &Path, user: &str) -> String {
    let mut entries = vec![
        E::dir("/bin", 0o755),
        E::file(
            "/bin/busybox",
            Content::Bytes(std::fs::read("/bin/busybox").expect("busybox-static")),
            0o755,
        ),
        E::dir("/etc", 0o755),
        E::text(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app user:/home/app:/bin/sh\n",
            0o644,
        ),
        E::text(
            "/etc/group",
            "root:x:0:\napp:x:1000:\nextra:x:2000:root,app\n",
            0o644,
        ),
        E::dir("/home", 0o755),
        E::dir("/home/app", 0o755).owner(1000, 1000),
    ];
    entries.extend(
        APPLETS
            .iter()
            .map(|a| E::symlink(&format!("/bin/{a}"), "busybox")),
    );
    let layers = vec![LayerSpec::new("busybox", entries)];
    let mut options =
        imagegen::ImageOptions::new(Compression::Gzip, imagegen::Platform::linux_amd64());
    options.config.entrypoint = vec!["/bin/sh".into(), "-c".into()];
    options.config.cmd = vec![
        "echo FOO=$FOO; echo uid=$(id -u) gid=$(id -g) groups=$(id -G); echo pwd=$(pwd) home=$HOME; \
         echo host=$(cat /proc/sys/kernel/hostname); exit 3"
            .into(),
    ];
    options.config.env = vec!["FOO=bar".into(), "PATH=/bin".into()];
    options.config.user = user.into();
    options.config.working_dir = "/work".into();
    imagegen::write_image_with(dir, Some("v1"), &layers, &options);
    format!("oci:{}:v1", dir.display())
}

fn materialize(o: &Ocidisk, image: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["materialize", "--init"];
    args.extend_from_slice(extra);
    args.extend([image, out.to_str().unwrap()]);
    o.ok(&args);
}

fn assert_exit(console: &str, status: i32) {
    assert!(
        console.contains(&format!("ocidisk-init: exit status {status}\n")),
        "want exit status {status}; console:\n{console}"
    );
}

#[test]
fn the_image_command_runs_as_its_user_with_its_env_and_workdir() {
    let dir = tempfile::tempdir().unwrap();
    let image = busybox_image(&dir.path().join("layout"), "app");
    let o = Ocidisk::new();
    let img = dir.path().join("busybox.img");
    materialize(&o, &image, &img, &[]);
    let console = boot(&img, false, "");
    for want in [
        "FOO=bar\n",
        "uid=1000 gid=1000 groups=1000 2000\n",
        "pwd=/work home=/home/app\n",
    ] {
        assert!(
            console.contains(want),
            "missing {want:?}; console:\n{console}"
        );
    }
    assert_exit(&console, 3);

    // The kernel command line overrides the env and the command (like
    // `docker run -e FOO=baz IMAGE ARGS`: Entrypoint stays, Cmd goes).
    let console = boot(&img, false, r#"FOO=baz -- "echo FOO=$FOO args; exit 4""#);
    assert!(console.contains("FOO=baz args\n"), "{console}");
    assert_exit(&console, 4);

    // A user the image does not have: one clear line, a non-zero status.
    let ghost = busybox_image(&dir.path().join("ghost"), "ghost");
    let img = dir.path().join("ghost.img");
    materialize(&o, &ghost, &img, &[]);
    let console = boot(&img, false, "");
    assert!(
        console.contains("ocidisk-init: user \"ghost\" not found in the image's /etc/passwd\n"),
        "{console}"
    );
    assert_exit(&console, 1);

    // `ocidisk inspect` says how to boot it.
    let out = o.ok(&["inspect", &image]);
    assert!(out.contains("init=/.ocidisk/init"), "{out}");
}

#[test]
fn orphans_and_zombies_are_reaped_and_the_vm_stops_with_the_main_process() {
    let dir = tempfile::tempdir().unwrap();
    let image = busybox_image(&dir.path().join("layout"), "app");
    let o = Ocidisk::new();
    let img = dir.path().join("busybox.img");
    materialize(&o, &image, &img, &["--read-only"]);
    // A grandchild that outlives its parent becomes PID 1's, exits, and
    // must be reaped; a background sleep is still running at the end.
    let script = "(sleep 1 &); sleep 4; \
                  echo zombies=$(grep -l ' Z ' /proc/[0-9]*/stat 2>/dev/null | wc -l); \
                  sleep 1000 & echo tmp=$(echo ok > /tmp/w && cat /tmp/w); exit 0";
    let console = boot(&img, true, &format!("-- \"{script}\""));
    assert!(console.contains("zombies=0\n"), "{console}");
    // A read-only root, and the process can write to /tmp.
    assert!(console.contains("tmp=ok\n"), "{console}");
    assert_exit(&console, 0);
}

#[test]
fn the_debian_image_runs_bash_and_counts_its_packages() {
    let layout = debian::layout();
    let dir = tempfile::tempdir().unwrap();
    let o = Ocidisk::new();
    let img = dir.path().join("debian.img");
    materialize(
        &o,
        &format!("oci:{}:bookworm", layout.display()),
        &img,
        &["--read-only"],
    );
    let console = boot(
        &img,
        true,
        r#"-- /bin/bash -c "echo packages=$(dpkg-query -W | wc -l)""#,
    );
    let n: usize = console
        .lines()
        .find_map(|l| l.strip_prefix("packages="))
        .unwrap_or_else(|| panic!("no package count; console:\n{console}"))
        .trim()
        .parse()
        .unwrap();
    assert!(n > 50, "{n} packages; console:\n{console}");
    assert_exit(&console, 0);
}

/// The ELF file at `path` is x86-64, static: no PT_INTERP program header.
fn assert_static_elf(bytes: &[u8]) {
    assert!(
        bytes.starts_with(b"\x7fELF\x02\x01"),
        "not a 64-bit LSB ELF"
    );
    let u16at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(u16at(18), 62, "e_machine is x86-64");
    let (phoff, phentsize, phnum) = (u64at(32), u16at(54), u16at(56));
    for i in 0..phnum {
        let p_type = u32::from_le_bytes(bytes[phoff + i * phentsize..][..4].try_into().unwrap());
        assert_ne!(p_type, 3, "PT_INTERP: the init is dynamically linked");
    }
}

#[test]
fn the_init_is_a_static_elf_and_a_disk_without_init_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let image = busybox_image(&dir.path().join("layout"), "app");
    let o = Ocidisk::new();
    let img = dir.path().join("with.img");
    materialize(&o, &image, &img, &[]);
    let dumped = dir.path().join("init");
    run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump /.ocidisk/init {}", dumped.display()))
            .arg(&img),
        Duration::from_secs(60),
    );
    assert_static_elf(&std::fs::read(&dumped).unwrap());
    let stat = run_ok(
        Command::new("debugfs")
            .args(["-R", "stat /.ocidisk/config.json"])
            .arg(&img),
        Duration::from_secs(60),
    );
    assert!(stat.stdout.contains("Type: regular"), "{}", stat.stdout);

    // XFS too: the same files, mounted by the kernel.
    let xfs = dir.path().join("with.xfs");
    materialize(&o, &image, &xfs, &["--fs", "xfs", "--read-only"]);
    {
        let m = LoopMount::typed(&xfs, "xfs");
        assert_static_elf(&std::fs::read(m.path().join(".ocidisk/init")).unwrap());
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(m.path().join(".ocidisk/config.json")).unwrap())
                .unwrap();
        assert_eq!(config["user"], "app");
        assert_eq!(config["entrypoint"][0], "/bin/sh");
        assert_eq!(config["stop_signal"], 15);
    }

    // Without --init: no /.ocidisk.
    let without = dir.path().join("without.img");
    o.ok(&["materialize", &image, without.to_str().unwrap()]);
    let out = Command::new("debugfs")
        .args(["-R", "stat /.ocidisk"])
        .arg(&without)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("File not found"), "{all}");

    // The same image gives the same disk, init included.
    let again = dir.path().join("again.img");
    materialize(&o, &image, &again, &[]);
    assert!(std::fs::read(&img).unwrap() == std::fs::read(&again).unwrap());

    // An architecture ocidisk has no init for: a clear error.
    let arm = dir.path().join("arm");
    imagegen::write_image(
        &arm,
        "v1",
        &[LayerSpec::new("x", vec![E::text("/a", "a", 0o644)])],
        Compression::Gzip,
        &imagegen::Platform::linux_arm64(),
    );
    let err = o.fail(&[
        "materialize",
        "--init",
        "--platform",
        "linux/arm64",
        &format!("oci:{}:v1", arm.display()),
        dir.path().join("arm.img").to_str().unwrap(),
    ]);
    assert!(
        err.contains("ocidisk has no init for arm64 images"),
        "{err}"
    );
}

#[test]
fn ctrl_alt_del_sends_the_stop_signal_to_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let image = busybox_image(&dir.path().join("layout"), "app");
    let o = Ocidisk::new();
    let img = dir.path().join("busybox.img");
    materialize(&o, &image, &img, &["--read-only"]);
    let mon = dir.path().join("monitor.sock");
    MONITOR.set(mon.clone()).unwrap();
    // `42-up` is what the shell prints, not what the command line says.
    let script = "trap 'echo got TERM; exit 7' TERM; echo $((6*7))-up; while :; do sleep 1; done";
    let press = Box::new(move || {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&mon).expect("QEMU monitor");
        s.write_all(b"sendkey ctrl-alt-delete\n").unwrap();
        std::thread::sleep(Duration::from_millis(500));
    });
    let console = boot_with(
        Drive::File(&img, true),
        &format!("-- \"{script}\""),
        Some(("42-up", press)),
    );
    assert!(console.contains("got TERM\n"), "{console}");
    assert_exit(&console, 7);
}

#[test]
fn a_served_lazy_disk_boots_into_the_image_process() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    busybox_image(&layout, "app");
    let reg = Registry::start();
    reg.push(&format!("oci:{}:v1", layout.display()), "initbox:v1", false);
    let o = Ocidisk::new();
    let sock = dir.path().join("vm.sock");
    let _served = Served::start(
        &o,
        &format!("{}/initbox:v1", reg.host()),
        &sock,
        &["--read-only", "--init"],
    );
    let console = boot_with(Drive::Socket(&sock), "", None);
    assert!(console.contains("uid=1000 gid=1000"), "{console}");
    assert_exit(&console, 3);
}
