#!/usr/bin/env bash
# bash scripts/gpu_prepare.sh [--force]
#
# Packs into gpu_bundle/ (git-ignored) everything scripts/gpu_run.sh needs on a GPU machine that
# has no network at all. Runs here, with the npm registry and Debian's mirror reachable:
#
#   deno.xz            the Deno binary this checkout runs with (x86-64 Linux; xz, ~30 MB)
#   deno_dir.tar.xz    a DENO_DIR holding every npm package of deno.json/deno.lock, filled by
#                      `deno install` and `deno cache` over the entry points gpu_run.sh runs
#   debs/*.deb         Debian's Vulkan loader and glvnd packages (amd64), unpacked there only when
#                      the machine has no libvulkan.so.1
#   shared.tar.xz      the small files of ../shared the GPU tests and benches read (stories260K,
#                      passkey-llama, duo-patterns); they never enter the repository
#   MANIFEST.txt       versions, checksums and sizes
#
# Each part is rebuilt only when its input changed (--force rebuilds all). Ends by measuring what a
# device-tool call would carry: the repository's travelling files plus the bundle, against 64 MiB.
#
# Environment: ZIGZAG_GPU_BUNDLE (default gpu_bundle), ZIGZAG_SHARED (default ../shared).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
B=${ZIGZAG_GPU_BUNDLE:-$ROOT/gpu_bundle}
SHARED=${ZIGZAG_SHARED:-$ROOT/../shared}
BUNDLE_MAX_MIB=45
CARRY_MAX_MIB=64
FORCE=0
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_prepare: unknown argument $a" >&2; exit 2 ;;
  esac
done

say() { echo "gpu_prepare: $*"; }
die() { echo "gpu_prepare: FAIL: $*" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
size_of() { du -sb "$1" | cut -f1; }

mkdir -p "$B"
TMP=$(mktemp -d /tmp/zigzag-gpu-prepare.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# ---- 1. the Deno binary ------------------------------------------------------------------------
DENO=$(command -v deno) || die "deno is not on PATH (npm install -g deno@2.9.6)"
DENO_REAL=$(readlink -f "$DENO")
DENO_VERSION=$("$DENO" --version | head -1 | awk '{print $2}')
DENO_BIN=$DENO_REAL
if [ "$(uname -m)" != x86_64 ]; then
  # The GPU machine is x86-64: take that build of the same version from npm.
  say "host is $(uname -m): fetching @deno/linux-x64-glibc@$DENO_VERSION from npm"
  (cd "$TMP" && npm pack --silent "@deno/linux-x64-glibc@$DENO_VERSION" >/dev/null)
  tar -xzf "$TMP/deno-linux-x64-glibc-$DENO_VERSION.tgz" -C "$TMP" package/deno
  DENO_BIN=$TMP/package/deno
fi
DENO_SHA=$(sha256sum "$DENO_BIN" | cut -d' ' -f1)
if [ "$FORCE" = 1 ] || [ ! -s "$B/deno.xz" ] || [ "$(cat "$B/deno.sha256" 2>/dev/null)" != "$DENO_SHA" ]; then
  say "compressing deno $DENO_VERSION ($(mib "$(size_of "$DENO_BIN")")) with xz -9 (about 2 minutes on 2 cores)"
  xz -T0 -9 -c "$DENO_BIN" >"$B/deno.xz.part"
  mv "$B/deno.xz.part" "$B/deno.xz"
  echo "$DENO_SHA" >"$B/deno.sha256"
  echo "$DENO_VERSION" >"$B/deno.version"
else
  say "deno.xz is current (deno $DENO_VERSION)"
fi

# ---- 2. npm dependencies: a DENO_DIR ---------------------------------------------------------
# The entry points gpu_run.sh runs (deno task bench/generate/fake-model, the GPU tests, the
# scripts); `deno install` caches every dependency of deno.json and deno.lock whatever they import.
ENTRIES=(main.ts cli/generate.ts cli/fake_model.ts bench/bench.ts
  tests/kernels_test.ts tests/gpu_model_test.ts tests/zigzag_test.ts
  scripts/gpu_adapter.ts scripts/gpu_summary.ts)
DEPS_KEY=$( (echo "$DENO_VERSION"; cat deno.json deno.lock 2>/dev/null) | sha256sum | cut -d' ' -f1)
if [ "$FORCE" = 1 ] || [ ! -s "$B/deno_dir.tar.xz" ] || [ "$(cat "$B/deno_dir.key" 2>/dev/null)" != "$DEPS_KEY" ]; then
  DD=$TMP/deno_dir
  say "filling a DENO_DIR: deno install, then deno cache over ${#ENTRIES[@]} entry points"
  DENO_DIR=$DD DENO_NO_UPDATE_CHECK=1 "$DENO" install --quiet >/dev/null ||
    die "deno install failed (npm registry reachable?)"
  present=()
  for e in "${ENTRIES[@]}"; do [ -f "$e" ] && present+=("$e"); done
  # One at a time: a module another engineer is moving breaks only its own entry point.
  for e in "${present[@]}"; do
    if ! DENO_DIR=$DD DENO_NO_UPDATE_CHECK=1 "$DENO" cache --quiet "$e" >"$TMP/cache.log" 2>&1; then
      say "warning: deno cache $e failed (its imports are being changed?); first lines:"
      head -3 "$TMP/cache.log" | sed 's/^/    /'
    fi
  done
  # gen/ (transpiled modules) is rebuilt there on demand; only downloads travel.
  tar -C "$DD" --exclude=./gen -cf - . | xz -T0 -6 >"$B/deno_dir.tar.xz.part"
  mv "$B/deno_dir.tar.xz.part" "$B/deno_dir.tar.xz"
  echo "$DEPS_KEY" >"$B/deno_dir.key"
  say "deno_dir.tar.xz: $(mib "$(size_of "$B/deno_dir.tar.xz")") (from $(mib "$(size_of "$DD")"))"
else
  say "deno_dir.tar.xz is current (deno.json and deno.lock unchanged)"
fi

# ---- 3. Debian's Vulkan loader packages (amd64) --------------------------------------------------
DEBS=(libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
have_all=1
for p in "${DEBS[@]}"; do compgen -G "$B/debs/${p}_*_amd64.deb" >/dev/null || have_all=0; done
if [ "$FORCE" = 1 ] || [ "$have_all" = 0 ]; then
  say "downloading ${DEBS[*]} (amd64) from Debian"
  rm -rf "$B/debs" && mkdir -p "$B/debs" "$TMP/amd64/partial"
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists="$TMP/amd64"
    -oDir::Cache="$TMP/amd64-cache" -oAPT::Sandbox::User=root -qq)
  apt-get "${o[@]}" update >/dev/null || die "apt-get update failed (Debian mirror reachable?)"
  (cd "$B/debs" && apt-get "${o[@]}" download "${DEBS[@]}" >/dev/null) ||
    die "apt-get download ${DEBS[*]} failed"
else
  say "debs/ is current ($(ls "$B/debs" | wc -l) packages)"
fi

# ---- 4. the small shared files the GPU tests and benches read --------------------------------
SHARED_PARTS=(models/stories260K models/passkey-llama duo-patterns)
if [ -d "$SHARED" ]; then
  SHARED_KEY=$(cd "$SHARED" && find "${SHARED_PARTS[@]}" -type f -printf '%p %s %T@\n' 2>/dev/null |
    sort | sha256sum | cut -d' ' -f1)
  if [ "$FORCE" = 1 ] || [ ! -s "$B/shared.tar.xz" ] || [ "$(cat "$B/shared.key" 2>/dev/null)" != "$SHARED_KEY" ]; then
    parts=()
    for p in "${SHARED_PARTS[@]}"; do [ -e "$SHARED/$p" ] && parts+=("$p"); done
    say "packing ../shared: ${parts[*]}"
    tar -C "$SHARED" -cf - "${parts[@]}" | xz -T0 -6 >"$B/shared.tar.xz.part"
    mv "$B/shared.tar.xz.part" "$B/shared.tar.xz"
    echo "$SHARED_KEY" >"$B/shared.key"
  else
    say "shared.tar.xz is current"
  fi
else
  say "warning: $SHARED not found: the GPU run will skip the tests and benches that read it"
  rm -f "$B/shared.tar.xz" "$B/shared.key"
fi

# ---- 5. manifest and sizes ---------------------------------------------------------------------
travel_bytes=0
while IFS= read -r -d '' f; do
  [ -f "$f" ] && [ ! -L "$f" ] && travel_bytes=$((travel_bytes + $(stat -c %s "$f")))
done < <(git ls-files -z --cached --others --exclude-standard)
bundle_bytes=$(size_of "$B")
total=$((travel_bytes + bundle_bytes))
{
  echo "zigzag GPU bundle, made $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(uname -m) by scripts/gpu_prepare.sh"
  echo "deno $DENO_VERSION sha256 $DENO_SHA"
  echo "npm packages: $(sed -n 's/^    "\([^"]*@[0-9][^"]*\)": {$/\1/p' deno.lock | tr '\n' ' ')"
  echo "entry points cached: ${ENTRIES[*]}"
  echo "debs: $(cd "$B/debs" && ls | tr '\n' ' ')"
  echo "shared: ${SHARED_PARTS[*]}"
  echo
  (cd "$B" && ls -l --time-style=+ deno.xz deno_dir.tar.xz shared.tar.xz debs/*.deb 2>/dev/null |
    awk '{printf "%10d  %s\n", $5, $NF}')
} >"$B/MANIFEST.txt"

say "bundle $B: $(mib "$bundle_bytes") (limit ~$BUNDLE_MAX_MIB MiB); repository files that travel: $(mib "$travel_bytes"); together $(mib "$total") of the device tool's $CARRY_MAX_MIB MiB"
git check-ignore -q "$B/deno.xz" 2>/dev/null || say "warning: $B is not git-ignored: add it to .gitignore, or it travels twice and may be committed"
[ "$bundle_bytes" -le $((BUNDLE_MAX_MIB * 1048576)) ] || say "warning: the bundle is over $BUNDLE_MAX_MIB MiB"
[ "$total" -le $((CARRY_MAX_MIB * 1048576)) ] || die "repository + bundle is $(mib "$total"), over the $CARRY_MAX_MIB MiB a device call carries"
say "ready: the device command is in README.md, 'Running on a GPU' (carry [\"$(basename "$B")\"])"
