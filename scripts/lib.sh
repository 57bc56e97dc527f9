# Shell helpers shared by scripts/demo.sh and bench/*.sh. Source, do not run.

# start_registry DIR [quiet]: a throwaway docker-registry on a free loopback
# port with its storage under DIR. Sets REGISTRY (host:port) and
# REGISTRY_PID. "quiet" turns the access log off (for benchmarks).
start_registry() {
  local dir=$1 quiet=${2:-}
  local port log
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if [ -n "$quiet" ]; then log='{level: warn, formatter: text, accesslog: {disabled: true}}'; else log='{level: info, formatter: text}'; fi
  cat >"$dir/registry.yml" <<YML
version: 0.1
log: $log
storage: {filesystem: {rootdirectory: $dir/registry}}
http: {addr: 127.0.0.1:$port}
YML
  docker-registry serve "$dir/registry.yml" >"$dir/registry.log" 2>&1 &
  REGISTRY_PID=$!
  REGISTRY=127.0.0.1:$port
  for _ in $(seq 100); do
    curl -fsS "http://$REGISTRY/v2/" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "docker-registry did not start; see $dir/registry.log" >&2
  return 1
}

stop_registry() {
  [ -n "${REGISTRY_PID:-}" ] || return 0
  kill "$REGISTRY_PID" 2>/dev/null
  wait "$REGISTRY_PID" 2>/dev/null || true
}

# median: the median of the numbers on stdin, one per line.
median() {
  sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'
}

now() { date +%s.%N; }

# time_runs CMD...: run CMD $runs times, each after the calling script's
# `cold` function, and print the median seconds.
time_runs() {
  local t=()
  for _ in $(seq "$runs"); do
    cold
    local s; s=$(now); "$@" >/dev/null 2>&1; local e; e=$(now)
    t+=("$(echo "$e - $s" | bc -l)")
  done
  printf '%s\n' "${t[@]}" | median
}

# bench_prepare: what every benchmark needs first. Installs what is missing,
# builds (once) the Debian test image and a release ocidisk. Sets `layout`
# (the OCI layout), `layer` (its largest blob's file name) and `bin`.
bench_prepare() {
  bash scripts/setup.sh >/dev/null 2>&1
  layout=$(bash scripts/debian-image.sh)
  cargo build --release --quiet
  bin=$PWD/target/release/ocidisk
  layer=$(ls -S "$layout/blobs/sha256" | head -1)
}

# scale_layout SCALE: the generated scale image's OCI layout (3 gzip layers,
# ~108,000 entries; SCALE 5 is about 1 GB of file data), made once and
# cached in $OCIDISK_FIXTURES (default /var/cache/ocidisk-fixtures). Sets
# `slayout`.
scale_layout() {
  local fixtures=${OCIDISK_FIXTURES:-/var/cache/ocidisk-fixtures}
  slayout=$fixtures/scale-v1-s$1
  if [ ! -f "$slayout/index.json" ]; then
    mkdir -p "$fixtures"
    OCIDISK_SCALE_OUT=$slayout OCIDISK_SCALE_SIZE=$1 \
      cargo test --release --quiet --test scale write_scale_layout -- --ignored >/dev/null
  fi
}

# push_debian DIR: a quiet registry under DIR holding the Debian image, with
# the layout's digests. Sets `ref`. Stop it with stop_registry.
push_debian() {
  start_registry "$1" quiet
  ref=$REGISTRY/debian:bookworm
  skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$layout:bookworm" "docker://$ref"
}

# vm_run SOCK ACTION INITRD: boot the test kit ($kit, from scripts/vm-kit.sh)
# under QEMU (TCG) on the vhost-user-blk socket SOCK, read-only, with
# ocidisk.action=ACTION; print the console.
vm_run() {
  timeout 300 qemu-system-x86_64 -machine q35,accel=tcg,memory-backend=mem -cpu max -m 512 -smp 1 \
    -object memory-backend-memfd,id=mem,size=512M,share=on -nodefaults -no-user-config \
    -display none -serial stdio -no-reboot -chardev "socket,id=c0,path=$1" \
    -device vhost-user-blk-pci,chardev=c0,num-queues=1 \
    -kernel "$kit/vmlinuz" -initrd "$kit/$3" \
    -append "console=ttyS0 quiet panic=-1 ocidisk.mount=ro ocidisk.action=$2" 2>&1 | tr -d '\r'
}
