#!/usr/bin/env bash
# deno task kube-test: the Kubernetes Deployment (deploy/kubernetes/deployment.yaml), run with
# `podman kube play` against the image `deno task container-test` builds, on this machine:
#
#  1. the image localhost/zigzag:container-test, built by scripts/container_test.sh when missing
#     (which also proves it); podman set up as that script sets it up;
#  2. a one-replica variant of the Deployment (scripts/kube_variant.ts): podman has no GPUs and
#     no PersistentVolumeClaims, so the GPU request goes and the model volume becomes a hostPath
#     of the stories260K model; the port is published on 127.0.0.1 only; the rest (env settings,
#     probes, grace period) is the manifest's own;
#  3. waits until the readiness probe's GET answers 200, then checks the startup and liveness
#     probes' endpoints, the served model name, and that /metrics exports, as gauges, the names
#     the HPA and the InferencePool's endpoint picker read;
#  4. one greedy generation over HTTP (POST /v1/completions, temperature 0) equals the CLI's
#     (`deno task generate` with the server's settings as flags) on this host and in the image;
#  5. SIGTERM: the server drains and exits 0 within podman's 10 s stop timeout; `podman kube
#     down` removes the pod.
#
# Environment (all optional): ZIGZAG_KT_MODEL (model dir, default ../shared/models/stories260K),
# ZIGZAG_CT_IMAGE (default localhost/zigzag:container-test).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$(id -u)" != 0 ]; then
  # rootful podman, as the image was built (scripts/container_test.sh)
  command -v sudo >/dev/null || { echo "kube-test: needs root (or sudo)" >&2; exit 1; }
  exec sudo -E bash "${BASH_SOURCE[0]}" "$@"
fi

IMAGE=${ZIGZAG_CT_IMAGE:-localhost/zigzag:container-test}
MODEL_DIR=$(cd "${ZIGZAG_KT_MODEL:-$ROOT/../shared/models/stories260K}" && pwd)
CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/zigzag
PROMPT="Once upon a time"
MAX_TOKENS=24
# What differs from the production settings for a 260K-parameter model on a CPU adapter.
OVERRIDES=(--env ZIGZAG_KV_CACHE_MB=64 --env ZIGZAG_SERVED_MODEL_NAME=stories260K)
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} DENO_WEBGPU_BACKEND=${DENO_WEBGPU_BACKEND:-vulkan}

T0=$SECONDS
step() { echo "== [$((SECONDS - T0))s] $*"; }
die() { echo "kube-test: FAIL: $*" >&2; exit 1; }

WORK=$(mktemp -d)
KUBE=$WORK/zigzag-kube.yaml
PLAYED=0
CTR=""
cleanup() {
  local rc=$?
  if [ "$PLAYED" = 1 ]; then
    [ $rc = 0 ] || { [ -n "$CTR" ] && podman logs "$CTR" 2>&1 | tail -20; }
    podman kube down "$KUBE" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  echo "kube-test: $([ $rc = 0 ] && echo passed || echo failed) in $((SECONDS - T0))s"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 1. podman and the image ----------------------------------------------------------------
command -v podman >/dev/null || die "podman is missing (deno task container-test installs it)"
if ! podman image exists "$IMAGE"; then
  step "image $IMAGE missing: building it with scripts/container_test.sh"
  ZIGZAG_CT_IMAGE=$IMAGE bash "$ROOT/scripts/container_test.sh" || die "container-test failed"
fi
mkdir -p "$CACHE_DIR"
# The same podman settings as container_test.sh: runc (crun fails on hybrid cgroups), lower
# default ulimits, no systemd.
export CONTAINERS_CONF=$CACHE_DIR/containers.conf
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
step "image $IMAGE: $(podman image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-12), $(podman --version)"

# ---- 2. the variant -------------------------------------------------------------------------
port=$(deno eval --no-config 'const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  console.log((l.addr as Deno.NetAddr).port); l.close();')
plan=$(cd "$ROOT" && deno run -A scripts/kube_variant.ts --model "$MODEL_DIR" --image "$IMAGE" \
  --host-port "$port" --out "$KUBE" "${OVERRIDES[@]}") || die "kube_variant.ts failed"
echo "$plan" >"$WORK/plan.json"
q() { deno eval --no-config "const p = JSON.parse(Deno.readTextFileSync('$WORK/plan.json'));
  const v = $1; console.log(Array.isArray(v) ? v.join('\n') : v ?? '');"; }
URL=http://127.0.0.1:$port

# ---- 3. play, probes ------------------------------------------------------------------------
step "podman kube play (Deployment $(q p.deployment), 1 replica, $MODEL_DIR as /models)"
podman kube play "$KUBE" >"$WORK/play.out" 2> >(grep -v 'systemd' >&2) ||
  { cat "$WORK/play.out"; die "podman kube play failed"; }
PLAYED=1
CTR=$(awk '/^Container:/ { getline; print; exit }' "$WORK/play.out")
[ -n "$CTR" ] || { cat "$WORK/play.out"; die "no container in podman kube play's output"; }
bound=$(podman port "$CTR" "$(q p.container_port)/tcp" | head -1)
[[ "$bound" == "127.0.0.1:$port" ]] || die "published on '$bound', not 127.0.0.1:$port only"

ready=$(q 'p.probes.readiness.path')
status=""
for _ in $(seq 1 240); do
  status=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "$URL$ready" || true)
  [ "$status" = 200 ] && break
  [ "$(podman inspect --format '{{.State.Running}}' "$CTR")" = true ] ||
    die "the container exited before the readiness probe passed"
  sleep 0.5
done
[ "$status" = 200 ] || die "readiness probe GET $ready never answered 200 (last: $status)"
step "readiness probe GET $ready: 200 at $URL"
for p in startup liveness; do
  path=$(q "p.probes.$p?.path")
  [ -n "$path" ] || die "the Deployment has no httpGet $p probe"
  s=$(curl -s --max-time 10 -o /dev/null -w '%{http_code}' "$URL$path" || true)
  [ "$s" = 200 ] || die "$p probe GET $path answered $s"
  echo "$p probe GET $path: 200"
done
[ "$(podman exec "$CTR" id -u)" != 0 ] || die "the server runs as root"

served=$(curl -sS -f --max-time 10 "$URL/v1/models" | deno eval --no-config \
  'console.log(JSON.parse(await new Response(Deno.stdin.readable).text()).data[0].id)')
[ "$served" = "$(q p.served_model_name)" ] ||
  die "/v1/models serves '$served', not ZIGZAG_SERVED_MODEL_NAME=$(q p.served_model_name)"
echo "served model: $served"

curl -sS -f --max-time 10 "$URL/metrics" >"$WORK/metrics.txt" || die "GET /metrics failed"
for m in $(q '[...new Set([...p.hpa_metrics, ...Object.values(p.epp_metrics)])]'); do
  grep -q "^# TYPE $m gauge$" "$WORK/metrics.txt" || die "/metrics has no gauge $m"
  echo "metric $m: gauge, $(grep -E "^$m(\{| )" "$WORK/metrics.txt" | head -1)"
done

# ---- 4. generation: HTTP vs the CLI ---------------------------------------------------------
body=$(printf '{"model": "%s", "prompt": "%s", "max_tokens": %d, "temperature": 0}' \
  "$served" "$PROMPT" "$MAX_TOKENS")
curl -sS -f --max-time 300 -X POST -H 'content-type: application/json' -d "$body" \
  "$URL/v1/completions" >"$WORK/http.json" || die "POST /v1/completions failed"
mapfile -t flags < <(q p.generate_flags)
step "HTTP generation done; the CLI (${flags[*]}) on this host, and in the image"
(cd "$ROOT" && deno task -q generate --model "$MODEL_DIR" --prompt "$PROMPT" \
  --max-tokens "$MAX_TOKENS" "${flags[@]}" --json) >"$WORK/cli.out" || die "the CLI failed"
podman run --rm --network none -v "$MODEL_DIR:/models:ro" "$IMAGE" \
  deno run -A --cached-only cli/generate.ts --model /models --prompt "$PROMPT" \
  --max-tokens "$MAX_TOKENS" "${flags[@]}" --json >"$WORK/cli-image.out" \
  2> >(grep -v 'systemd' >&2) || die "the CLI in the image failed"
grep -E '^\{' "$WORK/cli.out" | tail -1 >"$WORK/cli.json"
grep -E '^\{' "$WORK/cli-image.out" | tail -1 >"$WORK/cli-image.json"
deno eval --no-config '
  const [h, c, i] = Deno.args.map((p) => JSON.parse(Deno.readTextFileSync(p)));
  const text = h.choices?.[0]?.text;
  console.log("http:      ", JSON.stringify(text), h.usage?.completion_tokens, "tokens");
  console.log("cli:       ", JSON.stringify(c.text), c.generated_ids.length, "tokens");
  console.log("image cli: ", JSON.stringify(i.text), i.generated_ids.length, "tokens");
  if (typeof text !== "string" || text === "") throw new Error("no text over HTTP");
  if (text !== c.text) throw new Error("the text differs between the pod and the CLI");
  if (h.usage?.completion_tokens !== c.generated_ids.length) {
    throw new Error("the token count differs between the pod and the CLI");
  }
  if (i.text !== c.text || JSON.stringify(i.generated_ids) !== JSON.stringify(c.generated_ids)) {
    throw new Error("the CLI in the image differs from the CLI on this host");
  }
' "$WORK/http.json" "$WORK/cli.json" "$WORK/cli-image.json" ||
  die "the pod's generation differs from the CLI's"

# ---- 5. stop, down ---------------------------------------------------------------------------
step "SIGTERM (podman stop), then podman kube down"
t=$SECONDS
podman stop -t 10 "$CTR" >/dev/null 2> >(grep -v -E 'systemd|syslog' >&2) || die "podman stop failed"
took=$((SECONDS - t))
code=$(podman inspect --format "{{.State.ExitCode}}" "$CTR" 2>/dev/null)
echo "stopped in ${took}s, exit code $code: $(podman logs "$CTR" 2>&1 | grep -E 'SIGTERM' | tail -1)"
[ "$took" -lt 10 ] || die "the server ignored SIGTERM (podman killed it after its 10 s timeout)"
[ "$code" = 0 ] || die "the server exited $code after SIGTERM, not 0"
podman kube down "$KUBE" >/dev/null 2> >(grep -v -E 'systemd|syslog' >&2) ||
  die "podman kube down failed"
PLAYED=0
! podman container exists "$CTR" || die "the container is still there after podman kube down"
