//! Fleets: registries.conf mirrors in front of the real registry (a second
//! docker-registry as a pull-through cache), blocked registries, and
//! HTTP_PROXY / NO_PROXY for registry traffic.

mod common;

use common::cli::Ocidisk;
use common::imagegen::{self, Compression};
use common::lazy::disk_options;
use common::proxy::FaultProxy;
use common::registry::Registry;
use ocidisk::cache::BlobCache;
use ocidisk::disk::Disk;
use ocidisk::source::registries_conf::RegistriesConf;

fn write_conf(dir: &std::path::Path, text: &str) -> String {
    let p = dir.join("registries.conf");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn blob_gets(reg: &Registry) -> usize {
    reg.requests().iter().filter(|r| r.is_blob_fetch()).count()
}

#[test]
fn mirrors_serve_first_the_origin_is_the_fallback_and_blocked_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let mut origin = Registry::start();
    origin.push(&format!("oci:{}:v1", dir.path().display()), "app:v1", false);
    let mut mirror = Registry::start_mirror_of(&origin.url());
    let conf = write_conf(
        dir.path(),
        &format!(
            "[[registry]]\nlocation = \"{}\"\n\n[[registry.mirror]]\nlocation = \"{}\"\n",
            origin.host(),
            mirror.host()
        ),
    );
    let by_tag = format!("{}/app:v1", origin.host());
    let by_digest = format!("{}/app@{}", origin.host(), img.manifest_digest);
    let out = dir.path().join("out.img");
    let out = out.to_str().unwrap();

    // Without the file: straight from the origin (the oracle).
    let direct = dir.path().join("direct.img");
    Ocidisk::new().ok(&["materialize", &by_tag, direct.to_str().unwrap()]);
    let want = std::fs::read(&direct).unwrap();
    assert_eq!(blob_gets(&mirror), 0);

    // Through the mirror: its log shows every layer blob.
    Ocidisk::new().ok(&["materialize", "--registries-conf", &conf, &by_tag, out]);
    assert!(std::fs::read(out).unwrap() == want, "through the mirror");
    let fetched: Vec<String> = mirror
        .requests()
        .iter()
        .filter(|r| r.is_blob_fetch())
        .map(|r| r.uri.clone())
        .collect();
    for l in &img.layers {
        assert!(
            fetched.iter().any(|p| p.ends_with(&l.digest)),
            "layer {} did not come through the mirror: {fetched:?}",
            l.digest
        );
    }

    // Origin down: a digest reference still pulls (eagerly and lazily)
    // from what the mirror holds.
    origin.stop();
    Ocidisk::new().ok(&["materialize", "--registries-conf", &conf, &by_digest, out]);
    assert!(std::fs::read(out).unwrap() == want, "origin down");
    let o = Ocidisk::new();
    let cache = BlobCache::open(o.cache_dir()).unwrap();
    let mut opts = disk_options(&by_digest, false);
    opts.pull.source.registries_conf =
        RegistriesConf::load(Some(std::path::Path::new(&conf))).unwrap();
    let disk = Disk::open(&opts, &cache).unwrap();
    let mut got = vec![0u8; want.len()];
    for (i, chunk) in got.chunks_mut(1 << 20).enumerate() {
        disk.read_at((i as u64) << 20, chunk).unwrap();
    }
    assert!(got == want, "lazy disk with the origin down");
    drop(disk);

    // Mirror down: back to the origin.
    origin.restart();
    mirror.stop();
    let before = blob_gets(&origin);
    Ocidisk::new().ok(&["materialize", "--registries-conf", &conf, &by_tag, out]);
    assert!(std::fs::read(out).unwrap() == want, "mirror down");
    assert!(
        blob_gets(&origin) > before,
        "the origin served the fallback"
    );

    // Blocked.
    let blocked = write_conf(
        dir.path(),
        &format!(
            "[[registry]]\nlocation = \"{}\"\nblocked = true\n",
            origin.host()
        ),
    );
    let err = Ocidisk::new().fail(&["materialize", "--registries-conf", &blocked, &by_tag, out]);
    assert!(
        err.contains(&format!(
            "registry {} is blocked in {blocked}",
            origin.host()
        )),
        "{err}"
    );
    // A broken file names itself.
    let broken = write_conf(dir.path(), "[[registry]\n");
    let err = Ocidisk::new().fail(&["inspect", "--registries-conf", &broken, &by_tag]);
    assert!(err.contains(&broken), "{err}");
}

#[test]
fn short_names_resolve_through_aliases_and_search_registries() {
    let dir = tempfile::tempdir().unwrap();
    let img = imagegen::write_standard(dir.path(), "v1", Compression::Zstd);
    let reg = Registry::start();
    reg.push(
        &format!("oci:{}:v1", dir.path().display()),
        "team/app:v1",
        false,
    );
    let o = Ocidisk::new();
    let alias = write_conf(
        dir.path(),
        &format!("[aliases]\n\"myapp\" = \"{}/team/app\"\n", reg.host()),
    );
    let info = o.ok(&["inspect", "--json", "--registries-conf", &alias, "myapp:v1"]);
    assert!(info.contains(&img.manifest_digest), "{info}");
    let search = write_conf(
        dir.path(),
        &format!("unqualified-search-registries = [\"{}\"]\n", reg.host()),
    );
    let info = o.ok(&[
        "inspect",
        "--json",
        "--registries-conf",
        &search,
        "team/app:v1",
    ]);
    assert!(info.contains(&img.manifest_digest), "{info}");
    // Permissive: the first search registry that has it.
    let dead = common::registry::free_port();
    let permissive = write_conf(
        dir.path(),
        &format!(
            "unqualified-search-registries = [\"127.0.0.1:{dead}\", \"{}\"]\nshort-name-mode = \"permissive\"\n",
            reg.host()
        ),
    );
    let info = o.ok(&[
        "inspect",
        "--json",
        "--registries-conf",
        &permissive,
        "team/app:v1",
    ]);
    assert!(info.contains(&img.manifest_digest), "{info}");
    let enforcing = write_conf(
        dir.path(),
        &format!(
            "unqualified-search-registries = [\"127.0.0.1:{dead}\", \"{}\"]\n",
            reg.host()
        ),
    );
    let err = o.fail(&["inspect", "--registries-conf", &enforcing, "team/app:v1"]);
    assert!(err.contains("is ambiguous"), "{err}");
}

#[test]
fn http_proxy_carries_registry_traffic_and_no_proxy_bypasses_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = imagegen::write_standard(dir.path(), "v1", Compression::Gzip);
    let reg = Registry::start();
    reg.push(&format!("oci:{}:v1", dir.path().display()), "app:v1", false);
    let proxy = FaultProxy::start(&reg.host());
    let proxy_url = format!("http://{}", proxy.host());
    let by_tag = format!("{}/app:v1", reg.host());
    let out = dir.path().join("out.img");
    let layers: u64 = img.layers.iter().map(|l| l.size).sum();

    Ocidisk::new()
        .env("HTTP_PROXY", &proxy_url)
        .env("NO_PROXY", "")
        .ok(&["materialize", &by_tag, out.to_str().unwrap()]);
    assert!(
        proxy.bytes_down() >= layers,
        "the proxy carried {} bytes, the layers are {layers}",
        proxy.bytes_down()
    );
    let before = proxy.bytes_down();
    Ocidisk::new()
        .env("HTTP_PROXY", &proxy_url)
        .env("NO_PROXY", "127.0.0.1")
        .ok(&["materialize", &by_tag, out.to_str().unwrap()]);
    assert_eq!(proxy.bytes_down(), before, "NO_PROXY bypassed the proxy");
}
