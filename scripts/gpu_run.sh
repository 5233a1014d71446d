#!/usr/bin/env bash
# bash scripts/gpu_run.sh OUT_DIR [--allow-cpu | --adapter any] [--shrink | --full] [--budget S]
#                                 [--only a,b,..] [--skip a,b,..]
#
# Proves zigzag on the GPU machine: no network, repository root, gpu_bundle/ from
# scripts/gpu_prepare.sh carried along. It
#   1. unpacks the bundle: Deno (to /tmp), the DENO_DIR with every npm package, ../shared's small
#      files (linked as ../shared when the machine has none) and, when `ldconfig -p` knows no
#      libvulkan.so.1, Debian's Vulkan loader packages (dpkg -x to /, ldconfig);
#   2. probes the WebGPU adapter (scripts/gpu_adapter.ts: name, features, limits, one dispatch),
#      retries with VK_DRIVER_FILES pointing at the NVIDIA ICD JSON, and stops with one line when
#      no NVIDIA Vulkan driver answers, unless --allow-cpu (alias --adapter any) accepts another;
#   3. runs the steps below, each under its own timeout and inside the overall --budget (default
#      470 s on a GPU, so it exits within 8 minutes; 900 s on a CPU adapter), going on after a
#      failed step:
#        tests          kernel, whole-model and plan tests on the adapter (GPU files only)
#        bench-quick    deno task bench --quick
#        bench-smollm2  the full-depth SmolLM2-135M shapes (30 layers, vocab 49152), long contexts
#        fake-8b        deno task fake-model --preset llama3-8b-1048k --layers 2 --dtype bf16
#        generate-8b    deno task generate on it (--prompt-ids 1,2,3 --max-tokens 8 --json)
#        bench-scale    deno task bench --scale: context, logits, million, then the 32-layer load
#        serve          deno task bench --serve --serve-only throughput (stories260K)
#   4. writes OUT_DIR: run.log (every step's output), summary.json, report.md (every bench's
#      Markdown), bench-quick.json, bench-smollm2.json, bench-scale.json, serve.json: at most 8
#      files, no folders; prints a one-screen summary last (scripts/gpu_summary.ts).
#
# On a CPU adapter (llvmpipe; the dry run) the same steps run with shrunk shapes (--shrink is then
# the default; --full keeps the GPU sizes). Exit status: 0 every step ran (or was not offered),
# 1 a step failed or timed out, 2 no acceptable adapter.
#
# Environment: ZIGZAG_GPU_BUNDLE (default gpu_bundle), ZIGZAG_GPU_WORK (default
# /tmp/zigzag_gpu_run), ZIGZAG_GPU_L3 (the 8B checkpoint, default /tmp/l3; deleted at the end),
# ZIGZAG_GPU_SCALE_ARGS (extra arguments for bench --scale), ZIGZAG_GPU_ICDS (the NVIDIA ICD JSONs
# tried, default /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json and the system folders).
set -uo pipefail

START=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
OUT=""
ALLOW_CPU=0
SHRINK=auto
BUDGET=auto
ONLY=""
SKIP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --allow-cpu) ALLOW_CPU=1 ;;
    --adapter)
      shift
      [ "${1:-}" = any ] || { echo "gpu_run: --adapter takes 'any'" >&2; exit 2; }
      ALLOW_CPU=1 ;;
    --adapter=any) ALLOW_CPU=1 ;;
    --shrink) SHRINK=1 ;;
    --full) SHRINK=0 ;;
    --budget) shift; BUDGET=${1:-} ;;
    --only) shift; ONLY=${1:-} ;;
    --skip) shift; SKIP=${1:-} ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "gpu_run: unknown flag $1 (see --help)" >&2; exit 2 ;;
    *)
      [ -z "$OUT" ] || { echo "gpu_run: one OUT_DIR only (got $OUT and $1)" >&2; exit 2; }
      OUT=$1 ;;
  esac
  shift
done
[ -n "$OUT" ] || { usage >&2; exit 2; }
[[ "$BUDGET" =~ ^([0-9]+|auto)$ ]] || { echo "gpu_run: --budget takes seconds" >&2; exit 2; }
RESERVE=12 # seconds kept for the summary

mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
B=${ZIGZAG_GPU_BUNDLE:-$ROOT/gpu_bundle}
WORK=${ZIGZAG_GPU_WORK:-/tmp/zigzag_gpu_run}
L3=${ZIGZAG_GPU_L3:-/tmp/l3}
rm -rf "$WORK" && mkdir -p "$WORK/bin" "$WORK/steps" || exit 2
for f in run.log summary.json report.md bench-quick.json bench-smollm2.json bench-scale.json \
  serve.json; do rm -f "$OUT/$f"; done
LOG=$OUT/run.log
STEPS=$WORK/steps.tsv
: >"$STEPS"

export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} DENO_WEBGPU_BACKEND=vulkan NO_COLOR=1 \
  DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1

elapsed() { echo $(($(date +%s) - START)); }
say() { echo "gpu_run [$(printf '%3d' "$(elapsed)")s] $*"; echo "gpu_run [$(elapsed)s] $*" >>"$LOG"; }
note() { echo "$*" >>"$LOG"; }
xzcat_() { # xz may be missing on the machine: Python's lzma then
  if command -v xz >/dev/null; then xz -dc "$1"; else
    python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"
  fi
}

CREATED_LINK=""
cleanup() {
  [ -n "$CREATED_LINK" ] && [ -L "$CREATED_LINK" ] && rm -f "$CREATED_LINK"
  [ -n "${L3_MADE:-}" ] && rm -rf "$L3"
}
trap cleanup EXIT

note "zigzag gpu_run: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(uname -srm), $(nproc) CPUs, root $ROOT"
note "args: OUT=$OUT allow_cpu=$ALLOW_CPU shrink=$SHRINK budget=${BUDGET}s only=$ONLY skip=$SKIP"
note "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l) changed files"

# ---- 1. the bundle ---------------------------------------------------------------------------
if [ -s "$B/deno.xz" ]; then
  xzcat_ "$B/deno.xz" >"$WORK/bin/deno" && chmod +x "$WORK/bin/deno" ||
    { say "FAIL: cannot unpack $B/deno.xz"; exit 2; }
  export PATH=$WORK/bin:$PATH
elif command -v deno >/dev/null; then
  say "warning: no $B/deno.xz (run scripts/gpu_prepare.sh): using $(command -v deno)"
else
  say "FAIL: no Deno: run scripts/gpu_prepare.sh here and carry gpu_bundle"
  exit 2
fi
DENO_VERSION=$(deno --version 2>/dev/null | head -1)
[ -n "$DENO_VERSION" ] || { say "FAIL: $(command -v deno) does not run on this machine"; exit 2; }

if [ -s "$B/deno_dir.tar.xz" ]; then
  mkdir -p "$WORK/deno_dir" && xzcat_ "$B/deno_dir.tar.xz" | tar -x -C "$WORK/deno_dir" ||
    { say "FAIL: cannot unpack $B/deno_dir.tar.xz"; exit 2; }
  export DENO_DIR=$WORK/deno_dir
else
  say "warning: no $B/deno_dir.tar.xz: npm packages come from ${DENO_DIR:-the default Deno cache}"
fi

SHARED=$ROOT/../shared
HAVE_SHARED=0
if [ -f "$SHARED/models/stories260K/stories260K.bin" ]; then
  HAVE_SHARED=1
elif [ -s "$B/shared.tar.xz" ]; then
  mkdir -p "$WORK/shared" && xzcat_ "$B/shared.tar.xz" | tar -x -C "$WORK/shared"
  if [ ! -e "$SHARED" ] && ln -s "$WORK/shared" "$SHARED" 2>/dev/null; then
    CREATED_LINK=$SHARED
    HAVE_SHARED=1
  fi
fi
SHARED_NOTE=$([ "$HAVE_SHARED" = 1 ] && echo "${CREATED_LINK:+bundled copy linked as }../shared" ||
  echo "none (tests and benches that read ../shared are skipped)")
say "deno: ${DENO_VERSION#deno } ($(command -v deno)), DENO_DIR ${DENO_DIR:-default}, shared: $SHARED_NOTE"

# ---- 2. Vulkan loader and adapter -------------------------------------------------------------
export PATH=$PATH:/usr/sbin:/sbin # ldconfig
# Each bundled package is unpacked only when the library it provides is missing, so a machine
# that has them (this one, in a dry run) is left as it is.
has_lib() {
  ldconfig -p 2>/dev/null | grep -q "[[:space:]]$1 " && return 0
  local d
  for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /usr/lib64 /lib64 /usr/lib; do
    [ -e "$d/$1" ] && return 0
  done
  return 1
}
declare -A SONAME=([libvulkan1]=libvulkan.so.1 [libglvnd0]=libGLdispatch.so.0 [libglx0]=libGLX.so.0
  [libegl1]=libEGL.so.1 [libgl1]=libGL.so.1 [libopengl0]=libOpenGL.so.0 [libgles2]=libGLESv2.so.2)
unpacked=()
for f in "$B"/debs/*.deb; do
  [ -f "$f" ] || continue
  pkg=$(basename "$f"); pkg=${pkg%%_*}
  so=${SONAME[$pkg]:-}
  { [ -n "$so" ] && has_lib "$so"; } && continue
  if command -v dpkg >/dev/null && dpkg -x "$f" /; then unpacked+=("$pkg"); else
    say "warning: could not unpack $f"
  fi
done
[ ${#unpacked[@]} -gt 0 ] && ldconfig
if [ ${#unpacked[@]} -gt 0 ]; then
  LOADER="bundled debs unpacked (${unpacked[*]})"
elif has_lib libvulkan.so.1; then
  LOADER="system libvulkan.so.1"
else
  LOADER="none: no libvulkan.so.1 and no bundled debs"
fi
{
  echo "--- Vulkan: loader $LOADER"
  ldconfig -p 2>/dev/null | grep -E 'libvulkan\.so|libGLX_nvidia|libGLdispatch|libnvidia-glvkspirv' | sed 's/^/  /'
  for d in /usr/local/nvidia/share/vulkan/icd.d /usr/share/vulkan/icd.d /etc/vulkan/icd.d; do
    [ -d "$d" ] && echo "  $d: $(ls "$d" | tr '\n' ' ')"
  done
  command -v nvidia-smi >/dev/null && nvidia-smi -L 2>&1 | sed 's/^/  /'
} >>"$LOG" 2>&1

ADAPTER_RC=3
probe() { # -> ADAPTER_RC, ADAPTER_LINE, ADAPTER_NVIDIA (1/0)
  timeout -k 5 60 deno run -A --cached-only --no-check scripts/gpu_adapter.ts \
    --json "$WORK/adapter.json" >"$WORK/adapter.txt" 2>&1
  ADAPTER_RC=$?
  ADAPTER_LINE=$(grep -m1 '^adapter:' "$WORK/adapter.txt" || tail -1 "$WORK/adapter.txt")
  ADAPTER_NVIDIA=0
  [ "$ADAPTER_RC" = 0 ] && grep -q '^adapter:.*(NVIDIA)' "$WORK/adapter.txt" && ADAPTER_NVIDIA=1
  { echo "--- adapter probe (VK_DRIVER_FILES=${VK_DRIVER_FILES:-unset}): rc $ADAPTER_RC"
    sed 's/^/  /' "$WORK/adapter.txt"; } >>"$LOG"
}
probe
TRIED="the loader's default ICDs"
if [ "$ADAPTER_NVIDIA" = 0 ]; then
  SAVED_VK=${VK_DRIVER_FILES-__unset__}
  SAVED_LD=${LD_LIBRARY_PATH-__unset__}
  for icd in ${ZIGZAG_GPU_ICDS:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json \
    /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json}; do
    [ -f "$icd" ] || continue
    export VK_DRIVER_FILES=$icd
    egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    [ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
      [ -d "$d" ] && export LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    done
    probe
    TRIED="$TRIED, VK_DRIVER_FILES=$icd"
    [ "$ADAPTER_NVIDIA" = 1 ] && break
    # Why the loader refused it, for the log.
    VK_LOADER_DEBUG=error,warn timeout -k 5 60 deno run -A --cached-only --no-check \
      scripts/gpu_adapter.ts 2>&1 | head -40 | sed 's/^/  loader: /' >>"$LOG"
  done
  if [ "$ADAPTER_NVIDIA" = 0 ] && [ "$TRIED" != "the loader's default ICDs" ]; then
    # Back to the default ICDs, so --allow-cpu gets the adapter the first probe saw.
    if [ "$SAVED_VK" = __unset__ ]; then unset VK_DRIVER_FILES; else export VK_DRIVER_FILES=$SAVED_VK; fi
    if [ "$SAVED_LD" = __unset__ ]; then unset LD_LIBRARY_PATH; else export LD_LIBRARY_PATH=$SAVED_LD; fi
    unset __EGL_VENDOR_LIBRARY_FILENAMES
    probe
  fi
fi
sed -n '1,4p' "$WORK/adapter.txt"

if [ "$ADAPTER_NVIDIA" = 1 ]; then
  MODE=gpu
elif [ "$ALLOW_CPU" = 1 ] && [ "$ADAPTER_RC" = 0 ]; then
  MODE=cpu
  name=${ADAPTER_LINE#adapter: }
  say "warning: no NVIDIA Vulkan driver (tried $TRIED); --allow-cpu: running on ${name%% |*}"
else
  printf 'refused\t-\t%s\t0\t0\t%s\n' "$ADAPTER_RC" "no NVIDIA Vulkan driver" >>"$STEPS"
  deno run -A --cached-only --no-check scripts/gpu_summary.ts "$WORK" "$OUT" --quiet >>"$LOG" 2>&1
  name=${ADAPTER_LINE#adapter: }
  what=$([ "$ADAPTER_RC" = 3 ] && echo "no WebGPU adapter at all" ||
    echo "the adapter is ${name%% |*}$(grep -q 'kind cpu' "$WORK/adapter.txt" && echo ', a CPU one')")
  [ "$TRIED" = "the loader's default ICDs" ] && TRIED="$TRIED (no nvidia_icd.json found)"
  echo "gpu_run: FAIL: no NVIDIA Vulkan driver found: $what (tried $TRIED; Vulkan loader: $LOADER); --allow-cpu runs on it anyway"
  exit 2
fi
if [ "$SHRINK" = auto ]; then SHRINK=$([ "$MODE" = cpu ] && echo 1 || echo 0); fi
# 470 s on a GPU (the device call's 8 minutes); a dry run on 2 CPU cores may take 15 minutes.
if [ "$BUDGET" = auto ]; then BUDGET=$([ "$MODE" = cpu ] && echo 900 || echo 470); fi
DEADLINE=$((START + BUDGET))
say "mode $MODE, $([ "$SHRINK" = 1 ] && echo "shrunk shapes (dry run)" || echo "GPU shapes"), budget ${BUDGET}s"
# bud GPU_SECONDS SHRUNK_SECONDS: a step's budget in this mode.
bud() { [ "$SHRINK" = 1 ] && echo "$2" || echo "$1"; }

# ---- 3. the steps -----------------------------------------------------------------------------
in_list() { [[ ",$2," == *",$1,"* ]]; }
wanted() {
  if [ -n "$ONLY" ] && ! in_list "$1" "$ONLY"; then return 1; fi
  if [ -n "$SKIP" ] && in_list "$1" "$SKIP"; then return 1; fi
  return 0
}
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$STEPS"; } # name status rc secs budget note
skip() { record "$1" skipped - 0 0 "$2"; say "$(printf '%-14s' "$1") skipped: $2"; }

# step NAME BUDGET CMD...: runs CMD under min(BUDGET, time left), its output in steps/NAME.log and
# appended to run.log. Status: ok; errors (exit 0 but WebGPU errors logged); limit (an adapter
# limit was exceeded); timeout; fail.
step() {
  local name=$1 budget=$2
  shift 2
  if ! wanted "$name"; then return 0; fi
  local left=$((DEADLINE - $(date +%s) - RESERVE))
  local t=$((budget < left ? budget : left))
  if [ "$t" -lt 15 ]; then
    skip "$name" "no time left in the ${BUDGET}s budget"
    return 0
  fi
  local slog=$WORK/steps/$name.log t0 rc secs status
  echo "\$ $*" >"$slog"
  t0=$(date +%s%N)
  timeout -k 5 "$t" "$@" >>"$slog" 2>&1 </dev/null
  rc=$?
  secs=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    status=timeout
  elif grep -qE 'max_\*_buffer_binding_size|over maxStorageBufferBindingSize|exceeds the adapter' "$slog"; then
    status=limit
  elif [ "$rc" != 0 ]; then
    status=fail
  elif grep -qE 'WebGPU error|GPUValidationError|uncaptured' "$slog"; then
    status=errors
  else
    status=ok
  fi
  record "$name" "$status" "$rc" "$secs" "$t" ""
  {
    echo
    echo "===== [$name] $status (exit $rc) in ${secs}s of ${t}s ====="
    # Progress bars redraw with carriage returns: keep each line's last state.
    sed 's/.*\r//' "$slog" | tail -c 3000000
  } >>"$LOG"
  say "$(printf '%-14s %-8s %6ss (budget %ss)' "$name" "$status" "$secs" "$t")"
  [ "$status" = ok ]
}

TESTS=(tests/kernels_test.ts tests/kv_quant_test.ts tests/compensation_test.ts tests/windows_test.ts)
[ "$HAVE_SHARED" = 1 ] && TESTS+=(tests/gpu_model_test.ts tests/zigzag_test.ts tests/gguf_model_test.ts)
if [ "$SHRINK" = 1 ]; then
  # One or two tests per file: every kernel family and the runner still run on the adapter.
  step tests "$(bud 95 150)" deno test -A --no-check --cached-only --parallel \
    --filter '/embed|rmsnorm|kv_store|batched decode|every plan equals full|Q4_K_M|ring wraps/' \
    "${TESTS[@]}"
else
  step tests "$(bud 80 600)" deno test -A --no-check --cached-only --parallel "${TESTS[@]}"
fi

Q=() # shrunk cells for the dry run: same code path, fewer and smaller cells
[ "$SHRINK" = 1 ] && Q=(--plans full,duo,zigzag --max-context 512 --contexts 512
  --prefill-contexts 256 --reps 1 --prefill-reps 1 --profiles 1 --batches 1 --reference-mb 16)
step bench-quick "$(bud 50 180)" deno task bench --quick "${Q[@]}" --out "$WORK/bench-quick"

if [ "$SHRINK" = 1 ]; then
  S=(--layers 2 --vocab auto --plans full,zigzag --max-context 512 --contexts 512
    --prefill-contexts 256 --reps 1 --prefill-reps 1 --profiles 1 --batches 1
    --kernel-shapes 1536x576 --reference-mb 16)
else
  # Every layer and the whole vocabulary; decode out to 32k tokens, prefill to 8k.
  S=(--max-context 32768 --contexts 2048,8192,32768 --prefill-contexts 2048,8192 --reps 3
    --prefill-reps 2)
fi
step bench-smollm2 "$(bud 80 180)" deno task bench --preset smollm2-135m --kernels "${S[@]}" \
  --out "$WORK/bench-smollm2"

if wanted fake-8b || wanted generate-8b; then
  L3_MADE=1
  step fake-8b "$(bud 20 60)" deno task fake-model --preset llama3-8b-1048k \
    --layers "$([ "$SHRINK" = 1 ] && echo 1 || echo 2)" --dtype bf16 --out "$L3"
  if [ -f "$L3/config.json" ]; then
    step generate-8b "$(bud 30 120)" deno task generate --model "$L3" \
      --prompt-ids 1,2,3 --max-tokens 8 --json
    grep '^{' "$WORK/steps/generate-8b.log" 2>/dev/null | tail -1 >"$WORK/generate.json"
  elif wanted generate-8b; then
    skip generate-8b "no checkpoint at $L3 (fake-8b did not write one)"
  fi
fi

if wanted bench-scale; then
  if timeout -k 5 30 deno task bench --help 2>&1 | grep -q -- '--scale'; then
    # The 2-layer steps first, then the full-depth load (writes a ~16 GB checkpoint); the bench
    # writes its results after each step, so a cut-off run keeps what it finished.
    SC=(--scale-only context,logits,million,load --layers 32 --decode-tokens 8)
    [ "$SHRINK" = 1 ] && SC=(--scale-only context)
    # shellcheck disable=SC2086 # ZIGZAG_GPU_SCALE_ARGS is a list of words
    step bench-scale "$(bud 170 120)" deno task bench --scale "${SC[@]}" ${ZIGZAG_GPU_SCALE_ARGS:-} \
      --out "$WORK/bench-scale"
  else
    skip bench-scale "not offered: deno task bench --help has no --scale"
  fi
fi

if [ "$HAVE_SHARED" = 1 ]; then
  step serve "$(bud 30 120)" deno task bench --serve --serve-only throughput --model ../shared/models/stories260K --out "$WORK/serve"
elif wanted serve; then
  skip serve "no ../shared/models/stories260K"
fi

# ---- 4. results ------------------------------------------------------------------------------
if ! timeout -k 5 60 deno run -A --cached-only --no-check scripts/gpu_summary.ts "$WORK" "$OUT" \
  >"$WORK/summary.txt" 2>&1; then
  # The summary script failed: keep the JSON anyway, and say so.
  for s in bench-quick bench-smollm2; do
    [ -f "$WORK/$s/bench.json" ] && cp "$WORK/$s/bench.json" "$OUT/$s.json"
  done
  [ -f "$WORK/serve/serve.json" ] && cp "$WORK/serve/serve.json" "$OUT/serve.json"
  echo "gpu_run: scripts/gpu_summary.ts failed; steps:" >>"$WORK/summary.txt"
  column -t -s $'\t' "$STEPS" >>"$WORK/summary.txt" 2>/dev/null || cat "$STEPS" >>"$WORK/summary.txt"
fi
{ echo; echo "===== summary ====="; cat "$WORK/summary.txt"; } >>"$LOG"

# What comes back from the device tool: at most 8 files, 2 folders deep, plain names.
nfiles=$(find "$OUT" -type f | wc -l)
deep=$(find "$OUT" -mindepth 4 | wc -l)
odd=$(find "$OUT" -mindepth 1 | sed "s|^$OUT/||" | grep -cvE '^[A-Za-z0-9._/-]+$')
if [ "$nfiles" -gt 8 ] || [ "$deep" -gt 0 ] || [ "$odd" -gt 0 ]; then
  echo "gpu_run: warning: $OUT holds $nfiles files ($deep too deep, $odd oddly named): the device tool returns at most 8" |
    tee -a "$LOG"
fi

cat "$WORK/summary.txt"
bad=$(awk -F'\t' -v mode="$MODE" '$2 == "fail" || $2 == "timeout" || $2 == "errors" ||
  ($2 == "limit" && mode == "gpu") { n++ } END { print n + 0 }' "$STEPS")
name=${ADAPTER_LINE#adapter: }
echo "gpu_run: $MODE run on ${name%% |*}: $bad step(s) failed, $(elapsed)s in all; results in $OUT ($nfiles files)"
[ "$bad" = 0 ]
