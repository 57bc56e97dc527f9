//! `ocidisk serve` under a real VM: QEMU (TCG) boots Debian's kernel with
//! the served disk as /dev/vda, lazily backed by a real registry. The guest
//! lists every file (with sha256) and the listing must equal the image's
//! oracle (ext4, and ext3 mounted as ext3); a writable disk keeps what the
//! guest wrote across a VM restart on the same socket; two queues under two
//! vCPUs; and microvm (virtio-mmio).

mod common;

use std::time::Duration;

use common::cli::Ocidisk;
use common::fscheck::with_lost_found;
use common::imagegen::{self, Compression};
use common::registry::Registry;
use common::serve::Served;
use common::vm::{Machine, Vm, compare_listing, section};

const BOOT: Duration = Duration::from_secs(240);

struct Setup {
    _reg: Registry,
    _dir: tempfile::TempDir,
    o: Ocidisk,
    image: String,
    oracle: imagegen::Oracle,
    sock: std::path::PathBuf,
    work: std::path::PathBuf,
}

/// The standard image pushed to a real registry, served lazily from it.
fn setup(repo: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let oracle = with_lost_found(imagegen::oracle(&imagegen::standard_layers()));
    setup_in(repo, dir, oracle)
}

/// Two small layers without xattrs or huge directories (what the XFS
/// writer handles so far): every inode type, a hard link, a whiteout.
fn small_layers() -> Vec<imagegen::LayerSpec> {
    use imagegen::{Content, EntrySpec as E, LayerSpec};
    let big = E::file(
        "/usr/lib/big",
        Content::Pattern {
            len: 300_000,
            seed: 3,
        },
        0o644,
    );
    vec![
        LayerSpec::new(
            "base",
            vec![
                E::dir("/etc", 0o755),
                E::text("/etc/hostname", "xfs-guest\n", 0o644),
                E::text("/etc/gone", "whited out\n", 0o644),
                E::dir("/usr", 0o755),
                E::dir("/usr/lib", 0o755),
                big.clone(),
                E::hardlink_of("/usr/lib/big-link", &big),
                E::symlink("/usr/lib/rel", "big"),
                E::char_device("/etc/null", 1, 3, 0o666).owner(0, 5),
                E::fifo("/etc/fifo", 0o600),
                E::file(
                    "/usr/lib/suid",
                    Content::Pattern { len: 5000, seed: 4 },
                    0o4755,
                )
                .owner(1000, 1000),
            ],
        ),
        LayerSpec::new(
            "top",
            vec![
                E::whiteout("/etc/gone"),
                E::text("/etc/added", "layer two\n", 0o640),
            ],
        ),
    ]
}

/// [`small_layers`] pushed as `REPO:v1`.
fn setup_small(repo: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let layers = small_layers();
    imagegen::write_image(
        dir.path(),
        "v1",
        &layers,
        Compression::Gzip,
        &imagegen::Platform::linux_amd64(),
    );
    setup_in(repo, dir, imagegen::oracle(&layers))
}

fn setup_in(repo: &str, dir: tempfile::TempDir, oracle: imagegen::Oracle) -> Setup {
    let reg = Registry::start();
    reg.push(
        &format!("oci:{}:v1", dir.path().display()),
        &format!("{repo}:v1"),
        false,
    );
    Setup {
        image: format!("{}/{repo}:v1", reg.host()),
        oracle,
        sock: dir.path().join("vm.sock"),
        work: dir.path().to_path_buf(),
        _reg: reg,
        _dir: dir,
        o: Ocidisk::new(),
    }
}

fn assert_tree(console: &str, oracle: &imagegen::Oracle) {
    let listing = section(console, "TREE");
    assert!(listing.len() > 10, "guest listing too short:\n{console}");
    let diffs = compare_listing(&listing, oracle);
    assert!(
        diffs.is_empty(),
        "{} differences between the guest's view and the image:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

#[test]
fn a_vm_boots_from_the_lazy_disk_and_sees_every_file() {
    let s = setup("vmro");
    let metrics = format!("127.0.0.1:{}", common::registry::free_port());
    let served = Served::start(
        &s.o,
        &s.image,
        &s.sock,
        &["--read-only", "--metrics", &metrics],
    );
    let console = Vm::new("tree").run(&s.sock, BOOT);
    assert!(console.contains("OCIDISK-MOUNTED ro ext4"), "{console}");
    assert_tree(&console, &s.oracle);
    // Metrics: Prometheus text; what ocidisk counts as fetched is what the
    // registry's access log says it served (manifests, config, blobs).
    let m = common::metrics::scrape(&metrics);
    let host = s._reg.host();
    let served_bytes: u64 = s
        ._reg
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET"
                && r.user_agent.starts_with("ocidisk/")
                && (r.uri.contains("/blobs/") || r.uri.contains("/manifests/"))
        })
        .map(|r| r.bytes)
        .sum();
    let counted = m[&format!("ocidisk_source_bytes_total{{source=\"{host}\"}}")];
    assert!(served_bytes > 0);
    assert_eq!(counted as u64, served_bytes, "{m:#?}");
    assert!(
        m["ocidisk_guest_requests_total{type=\"read\"}"] > 100.0,
        "{m:#?}"
    );
    assert!(m["ocidisk_guest_read_bytes_total"] > 1e6, "{m:#?}");
    assert!(m["ocidisk_span_cache_misses_total"] > 0.0, "{m:#?}");
    assert_eq!(m["ocidisk_errors_total{kind=\"fetch\"}"], 0.0);
    // Firmware (SeaBIOS probes virtio disks) and then the kernel each
    // negotiated the device on the one connection.
    let log = served.stderr();
    assert_eq!(log.matches("frontend connected").count(), 1, "{log}");
    assert!(
        log.matches("driver accepted features").count() >= 2,
        "firmware and kernel both drove the device:\n{log}"
    );
}

#[test]
fn a_vm_mounts_an_ext3_disk_and_sees_every_file() {
    let s = setup("vmext3");
    let _served = Served::start(&s.o, &s.image, &s.sock, &["--read-only", "--fs", "ext3"]);
    let mut vm = Vm::new("tree");
    vm.fs = "ext3";
    let console = vm.run(&s.sock, BOOT);
    assert!(
        console.contains("OCIDISK-MOUNTED ro ext3"),
        "the guest kernel mounts it as ext3:\n{console}"
    );
    assert_tree(&console, &s.oracle);
}

#[test]
fn a_vm_mounts_an_xfs_disk_and_sees_every_file() {
    let s = setup_small("vmxfs");
    let _served = Served::start(&s.o, &s.image, &s.sock, &["--read-only", "--fs", "xfs"]);
    let mut vm = Vm::new("tree");
    vm.fs = "xfs";
    let console = vm.run(&s.sock, BOOT);
    assert!(
        console.contains("OCIDISK-MOUNTED ro xfs"),
        "the guest kernel mounts it as xfs:\n{console}"
    );
    assert_tree(&console, &s.oracle);
}

#[test]
fn guest_writes_survive_a_vm_restart_on_the_same_socket() {
    let s = setup("vmrw");
    let overlay = s.work.join("guest.overlay");
    let _served = Served::start(
        &s.o,
        &s.image,
        &s.sock,
        &["--overlay", overlay.to_str().unwrap()],
    );
    let mut vm = Vm::new("write:hello-from-the-guest");
    vm.mount = "rw";
    vm.run(&s.sock, BOOT);
    // Same server, new VM: the file is there.
    let mut vm = Vm::new("cat");
    vm.mount = "rw";
    let console = vm.run(&s.sock, BOOT);
    assert_eq!(
        section(&console, "CAT"),
        vec!["hello-from-the-guest"],
        "{console}"
    );
}

#[test]
fn a_writable_xfs_disk_keeps_guest_writes_and_stays_repair_clean() {
    let s = setup_small("vmxfsrw");
    let overlay = s.work.join("guest.overlay");
    // The whole disk, lower image and guest writes, kept in one file.
    let full = s.work.join("full.xfs");
    let mut served = Served::start(
        &s.o,
        &s.image,
        &s.sock,
        &[
            "--fs",
            "xfs",
            "--overlay",
            overlay.to_str().unwrap(),
            "--prefetch",
            "--flush-to",
            full.to_str().unwrap(),
        ],
    );
    let mut vm = Vm::new("write:hello-from-an-xfs-guest");
    vm.mount = "rw";
    vm.fs = "xfs";
    let console = vm.run(&s.sock, BOOT);
    assert!(console.contains("OCIDISK-MOUNTED rw xfs"), "{console}");
    let mut vm = Vm::new("cat");
    vm.mount = "rw";
    vm.fs = "xfs";
    let console = vm.run(&s.sock, BOOT);
    assert_eq!(
        section(&console, "CAT"),
        vec!["hello-from-an-xfs-guest"],
        "{console}"
    );
    assert!(served.stop().success(), "{}", served.stderr());
    common::fscheck::assert_xfs_repair_clean(&full);
}

#[test]
fn two_queues_with_two_vcpus() {
    let s = setup("vmmq");
    let _served = Served::start(&s.o, &s.image, &s.sock, &["--read-only", "--queues", "2"]);
    let mut vm = Vm::new("tree");
    vm.cpus = 2;
    vm.queues = 2;
    let console = vm.run(&s.sock, BOOT);
    assert!(
        console.contains("OCIDISK-QUEUES 2"),
        "guest sees 2 queues:\n{console}"
    );
    assert_tree(&console, &s.oracle);
}

#[test]
fn microvm_boots_over_virtio_mmio() {
    let s = setup("vmmicro");
    let _served = Served::start(&s.o, &s.image, &s.sock, &["--read-only"]);
    let mut vm = Vm::new("tree");
    vm.machine = Machine::Microvm;
    let console = vm.run(&s.sock, BOOT);
    assert_tree(&console, &s.oracle);
}
