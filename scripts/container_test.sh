#!/usr/bin/env bash
# deno task container-test: builds the zigzag image and proves it, with podman, on a machine that
# has Debian's packages and the npm registry but no Docker Hub and no Docker engine.
#
#  1. installs Debian's podman, runc, debootstrap and iptables (when missing) and points podman at
#     runc with lower default ulimits through a CONTAINERS_CONF file (crun fails on hybrid cgroups;
#     podman's default limits exceed what such a host allows);
#  2. builds a stand-in for denoland/deno:debian-2.9.6: debootstrap --variant=minbase bookworm plus
#     the Deno binary from the npm package @deno/linux-x64-glibc, imported with podman import (its
#     tar is cached under ${XDG_CACHE_HOME:-~/.cache}/zigzag);
#  3. podman build --format docker (the OCI format drops HEALTHCHECK) with --build-arg BASE=...;
#  4. runs the image with the model mounted read-only at /models, published on 127.0.0.1 only,
#     waits for /health, runs one greedy generation over HTTP and compares it with the CLI's (on
#     this host, and in the image with --network none), checks the user is not root and runs
#     `podman healthcheck run`;
#  5. misconfiguration: no model mounted, and a plan path that does not exist, must each make the
#     container exit 1 with one log line naming the variable and no stack trace.
#
# Environment (all optional): ZIGZAG_CT_MODEL (model dir, default ../shared/models/stories260K),
# ZIGZAG_CT_CONTEXT (build context, default the repo), ZIGZAG_CT_IMAGE (tag, default
# localhost/zigzag:container-test; kept as the next run's cache), ZIGZAG_CT_DEBIAN_MIRROR (default:
# the host's apt mirror, else deb.debian.org).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
  # debootstrap and rootful podman need root.
  command -v sudo >/dev/null || { echo "container-test: needs root (or sudo)" >&2; exit 1; }
  exec sudo -E bash "${BASH_SOURCE[0]}" "$@"
fi

DENO_VERSION=2.9.6
SUITE=bookworm
BASE_IMAGE=localhost/zigzag-deno-base:$DENO_VERSION
IMAGE=${ZIGZAG_CT_IMAGE:-localhost/zigzag:container-test}
CONTEXT=${ZIGZAG_CT_CONTEXT:-$ROOT}
MODEL_DIR=$(cd "${ZIGZAG_CT_MODEL:-$ROOT/../shared/models/stories260K}" && pwd)
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/zigzag
BASE_TAR=$CACHE_DIR/deno-base-$SUITE-$DENO_VERSION.tar
PROMPT="Once upon a time"
MAX_TOKENS=24
CPORT=8080 # PORT inside the container: not the default, to prove PORT is honoured
NAME=zigzag-ct-$$

T0=$SECONDS
step() { echo "== [$((SECONDS - T0))s] $*"; }
die() { echo "container-test: FAIL: $*" >&2; exit 1; }

WORK=$(mktemp -d)
CONTAINERS=()
cleanup() {
  local rc=$?
  for c in "${CONTAINERS[@]}"; do podman rm -f -v "$c" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 1. podman ------------------------------------------------------------------------------
step "tools: podman runc debootstrap iptables curl"
missing=()
for p in podman runc debootstrap iptables curl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

mkdir -p "$CACHE_DIR"
export CONTAINERS_CONF=$CACHE_DIR/containers.conf
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
podman --version

# ---- 2. base image --------------------------------------------------------------------------
if podman image exists "$BASE_IMAGE"; then
  step "base image $BASE_IMAGE: present"
else
  if [ ! -s "$BASE_TAR" ]; then
    mirror=${ZIGZAG_CT_DEBIAN_MIRROR:-}
    if [ -z "$mirror" ] && [ -r /etc/apt/sources.list.d/debian.sources ]; then
      mirror=$(awk '$1 == "URIs:" && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
      mirror=$(awk '$1 == "deb" && $2 !~ /^\[/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list)
    fi
    mirror=${mirror:-http://deb.debian.org/debian}
    step "base image: debootstrap --variant=minbase $SUITE from $mirror"
    rootfs=$WORK/rootfs
    debootstrap --variant=minbase --include=tini "$SUITE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
      { tail -20 "$WORK/debootstrap.log"; die "debootstrap failed"; }

    step "base image: deno $DENO_VERSION from npm @deno/linux-x64-glibc"
    (cd "$WORK" && npm pack --silent "@deno/linux-x64-glibc@$DENO_VERSION" >/dev/null)
    tar -xzf "$WORK"/deno-linux-x64-glibc-"$DENO_VERSION".tgz -C "$WORK" package/deno
    install -m 0755 "$WORK/package/deno" "$rootfs/usr/bin/deno"
    chroot "$rootfs" /usr/bin/deno --version | head -1

    # What denoland/deno:debian adds to debian:bookworm-slim: user deno (1993), /deno-dir, tini
    # and its entrypoint. Apt sources and apt's settings as on this host, so that the image build
    # reaches the same mirror.
    chroot "$rootfs" sh -ec 'groupadd -g 1993 deno; useradd -u 1993 -g deno -m -s /bin/bash deno
      mkdir -p /deno-dir; chown deno:deno /deno-dir; ln -sf /usr/bin/tini /tini'
    cat >"$rootfs/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
set -e
if [ "$1" != "${1#-}" ]; then exec deno "$@"; fi
case "$1" in
  bench | bundle | cache | check | compile | completions | coverage | doc | eval | fmt | help | info | \
  init | install | jupyter | lint | lsp | publish | repl | run | serve | task | test | types | \
  uninstall | upgrade | vendor) exec deno "$@" ;;
esac
exec "$@"
EOF
    chmod 0755 "$rootfs/usr/local/bin/docker-entrypoint.sh"
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # e.g. a snapshot mirror whose Release files are past their Valid-Until
    grep -h -E '^Acquire::Check-(Valid-Until|Date)' /etc/apt/apt.conf.d/* 2>/dev/null \
      >"$rootfs/etc/apt/apt.conf.d/99zigzag-ci" || rm -f "$rootfs/etc/apt/apt.conf.d/99zigzag-ci"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
    tar -C "$rootfs" --numeric-owner -cf "$BASE_TAR.part" .
    mv "$BASE_TAR.part" "$BASE_TAR"
    rm -rf "$rootfs"
  fi
  step "base image: podman import $BASE_IMAGE"
  podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV DENO_DIR=/deno-dir/' \
    --change 'ENV DENO_INSTALL_ROOT=/usr/local' \
    --change "ENV DENO_VERSION=$DENO_VERSION" \
    --change 'WORKDIR /deno-dir' \
    --change 'ENTRYPOINT ["/tini", "--", "docker-entrypoint.sh"]' \
    --change 'CMD ["eval", "console.log(Deno.version)"]' \
    --quiet "$BASE_TAR" "$BASE_IMAGE" >/dev/null
fi

# ---- 3. build -------------------------------------------------------------------------------
step "podman build $IMAGE (context $CONTEXT)"
build_opts=()
# Behind a TLS-intercepting egress proxy (as on CI), deno inside the build must trust what this
# host trusts. The host's CA bundle is lent to the build's RUN steps in a directory mounted over
# /tmp, which the base already has: a mount, not a layer, so neither the bundle nor a mount point
# ends up in the image.
ca=/etc/ssl/certs/ca-certificates.crt
if [ -s "$ca" ]; then
  mkdir -m 1777 "$WORK/build-tmp"
  cp "$ca" "$WORK/build-tmp/zigzag-build-ca.pem"
  chmod 0644 "$WORK/build-tmp/zigzag-build-ca.pem"
  build_opts+=(--volume "$WORK/build-tmp:/tmp" --build-arg DENO_CERT=/tmp/zigzag-build-ca.pem)
fi
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
podman build --format docker --pull=never --build-arg "BASE=$BASE_IMAGE" -t "$IMAGE" "${build_opts[@]}" \
  -f "$ROOT/Dockerfile" "$CONTEXT" >"$WORK/build.log" 2>&1 ||
  { tail -40 "$WORK/build.log"; die "podman build failed"; }
# The image stays (its layers are the next run's cache); the one it replaced goes, with its
# layers that nothing else uses.
new_id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then podman rmi "$old_id" >/dev/null 2>&1 || true; fi
hc=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")
[[ "$hc" == *health* ]] || die "image has no HEALTHCHECK (got $hc)"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[ -n "$user" ] && [ "$user" != root ] && [ "$user" != 0 ] || die "image user is '$user', not a non-root user"

# podman run, less its complaint that (without systemd) it cannot start the periodic
# healthcheck timer; `podman healthcheck run` below runs the check itself.
prun() { podman run "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }

# ---- 4. serve -------------------------------------------------------------------------------
step "run with $MODEL_DIR at /models (ro), PORT=$CPORT, on 127.0.0.1"
prun -d --name "$NAME" -e PORT=$CPORT -p "127.0.0.1::$CPORT" \
  -v "$MODEL_DIR:/models:ro" "$IMAGE" >/dev/null
CONTAINERS+=("$NAME")
hostport=$(podman port "$NAME" "$CPORT/tcp" | head -1)
[[ "$hostport" == 127.0.0.1:* ]] || die "published on '$hostport', not 127.0.0.1 only"
URL=http://$hostport

status=""
for _ in $(seq 1 240); do
  status=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "$URL/health" || true)
  [ "$status" = 200 ] && break
  if [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" != true ]; then
    podman logs "$NAME" | tail -20
    die "container exited before /health was 200"
  fi
  sleep 0.5
done
[ "$status" = 200 ] || { podman logs "$NAME" | tail -20; die "/health never answered 200 (last: $status)"; }
step "/health 200 at $URL"

uid=$(podman exec "$NAME" id -u)
[ "$uid" != 0 ] || die "the server runs as root"
echo "server uid $uid"

body=$(printf '{"prompt": "%s", "max_tokens": %d, "temperature": 0}' "$PROMPT" "$MAX_TOKENS")
curl -sS -f --max-time 300 -X POST -H 'content-type: application/json' -d "$body" "$URL/v1/generate" \
  >"$WORK/http.json" || { podman logs "$NAME" | tail -20; die "POST /v1/generate failed"; }
step "HTTP generation done; the CLI on this host, and in the image without a network"
(cd "$CONTEXT" && deno task -q generate --model "$MODEL_DIR" --prompt "$PROMPT" \
  --max-tokens "$MAX_TOKENS" --json) >"$WORK/cli.out" || die "the CLI failed"
prun --rm --network none -v "$MODEL_DIR:/models:ro" "$IMAGE" \
  deno run -A --cached-only cli/generate.ts --model /models --prompt "$PROMPT" \
  --max-tokens "$MAX_TOKENS" --json >"$WORK/cli-image.out" || die "the CLI in the image failed"
# each CLI's result is the last line that is a JSON object
grep -E '^\{' "$WORK/cli.out" | tail -1 >"$WORK/cli.json"
grep -E '^\{' "$WORK/cli-image.out" | tail -1 >"$WORK/cli-image.json"
deno eval --no-config '
  const [h, c, i] = Deno.args.map((p) => JSON.parse(Deno.readTextFileSync(p)));
  const hi = JSON.stringify(h.token_ids), ci = JSON.stringify(c.generated_ids);
  console.log("http:      ", hi, JSON.stringify(h.text));
  console.log("cli:       ", ci, JSON.stringify(c.text));
  console.log("image cli: ", JSON.stringify(i.generated_ids), JSON.stringify(i.text));
  if (!Array.isArray(h.token_ids) || h.token_ids.length === 0) throw new Error("no token_ids over HTTP");
  if (hi !== ci) throw new Error("token ids differ between the container and the CLI");
  if (h.text !== c.text) throw new Error("text differs between the container and the CLI");
  if (JSON.stringify(i.generated_ids) !== ci || i.text !== c.text) {
    throw new Error("the CLI in the image differs from the CLI on the host");
  }
' "$WORK/http.json" "$WORK/cli.json" "$WORK/cli-image.json" ||
  die "the container's generation differs from the CLI's"

step "podman healthcheck run"
hs=$(podman healthcheck run "$NAME" 2>&1) || die "healthcheck: $hs"
echo "healthcheck: ${hs:-healthy}"
t=$SECONDS
podman stop -t 10 "$NAME" >/dev/null 2>&1 || true
[ $((SECONDS - t)) -lt 10 ] || echo "container-test: warning: the server ignored SIGTERM (killed after 10 s)"
podman rm -f -v "$NAME" >/dev/null 2>&1
CONTAINERS=()

# ---- 5. misconfiguration --------------------------------------------------------------------
# $1: the variable the log line must name; the rest: podman run options.
expect_clean_exit() {
  local var=$1
  local c=$NAME-$var
  shift
  prun -d --name "$c" "$@" "$IMAGE" >/dev/null
  CONTAINERS+=("$c")
  local code
  code=$(timeout 120 podman wait "$c") || die "$var: the container did not exit within 120 s"
  podman logs "$c" >"$WORK/$var.log" 2>&1
  echo "$var: exit $code: $(grep -v '^\s*$' "$WORK/$var.log" | head -3)"
  [ "$code" = 1 ] || die "$var: exit code $code, wanted 1"
  local restarts
  restarts=$(podman inspect --format '{{.RestartCount}}' "$c")
  [ "${restarts:-0}" = 0 ] || die "$var: restarted $restarts times"
  grep -q -E "^zigzag: .*$var" "$WORK/$var.log" || die "$var: no 'zigzag: ... $var ...' log line"
  if grep -q -E '^\s+at |Stack backtrace|Uncaught' "$WORK/$var.log"; then
    cat "$WORK/$var.log"
    die "$var: the log has a stack trace"
  fi
  local lines
  lines=$(grep -c -v '^\s*$' "$WORK/$var.log" || true)
  [ "$lines" -le 3 ] || { cat "$WORK/$var.log"; die "$var: $lines log lines, wanted one clear line"; }
}
# (--network none: the image must get as far as checking its configuration without a network)
step "misconfiguration: no model mounted"
expect_clean_exit ZIGZAG_MODEL --network none
step "misconfiguration: a plan path that does not exist"
expect_clean_exit ZIGZAG_PLAN --network none -v "$MODEL_DIR:/models:ro" \
  -e ZIGZAG_PLAN=/models/no-such-plan.json

step "container-test: passed"
