#!/usr/bin/env bash
# deno task setup: what zigzag needs from the system, in one command that works as root or as a
# user with sudo, on a fresh Debian/Ubuntu machine whose package lists were never fetched, and
# again and again (it changes nothing when all is there):
#
#  - Mesa's Vulkan drivers (mesa-vulkan-drivers, with the Vulkan loader libvulkan1): lavapipe /
#    llvmpipe, a WebGPU adapter on the CPU, for machines without a GPU. On a GPU host the
#    driver's own Vulkan ICD is used instead; having Mesa's as well does no harm.
#  - `apt-get update` first only when needed: no package lists yet, or they do not know the
#    package; and once more if the install fails on lists that have gone stale.
#  - then asks WebGPU for the adapter zigzag will use (`deno task doctor` says more).
#
# Environment: ZIGZAG_SETUP_PACKAGES (default "mesa-vulkan-drivers libvulkan1").
set -euo pipefail

PACKAGES=(${ZIGZAG_SETUP_PACKAGES:-mesa-vulkan-drivers libvulkan1})

say() { echo "setup: $*"; }
die() { echo "setup: $*" >&2; exit 1; }

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
if command -v dpkg-query >/dev/null; then
  for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
fi

if ! command -v apt-get >/dev/null; then
  say "no apt-get: not a Debian/Ubuntu system; install Mesa's Vulkan driver with your package"
  say "manager (Fedora: dnf install mesa-vulkan-drivers; Arch: pacman -S vulkan-swrast;"
  say "Alpine: apk add mesa-vulkan-swrast), or your GPU's driver with its Vulkan ICD"
elif [ ${#missing[@]} -eq 0 ]; then
  say "${PACKAGES[*]}: already installed"
else
  # Root runs apt-get itself (a container or a fresh VM often has no sudo); anyone else
  # through sudo, when there is one.
  SUDO=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null ||
      die "installing ${missing[*]} needs root: run this as root, or install sudo"
    SUDO=(sudo)
  fi
  apt_get() { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"; }
  update() {
    say "apt-get update${1:+ ($1)}"
    apt_get update -q >/dev/null || die "apt-get update failed"
  }
  # Lists are needed when there are none at all (a fresh image) or they do not know a package.
  lists=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' 2>/dev/null | head -1)
  if [ -z "$lists" ]; then
    update "no package lists yet"
  else
    for p in "${missing[@]}"; do
      cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ { print $2 }')
      if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
        update "the lists do not know $p"
        break
      fi
    done
  fi
  say "apt-get install ${missing[*]}"
  if ! apt_get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
    # Lists that have gone stale name package versions the mirror no longer has (404).
    update "retrying on fresh package lists"
    apt_get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
      die "apt-get install ${missing[*]} failed"
  fi
  for p in "${missing[@]}"; do installed "$p" || die "$p is still not installed"; done
  say "installed ${missing[*]}"
fi

# The adapter zigzag will use (as gpu/device.ts asks for it).
if command -v deno >/dev/null; then
  export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} DENO_WEBGPU_BACKEND=${DENO_WEBGPU_BACKEND:-vulkan}
  adapter=$(deno eval --no-config '
    const a = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" });
    console.log(a ? (a.info.description || a.info.device || "unnamed adapter") : "");
  ' 2>/dev/null || true)
  [ -n "$adapter" ] ||
    die "no WebGPU adapter on the $DENO_WEBGPU_BACKEND backend; \`deno task doctor\` says why"
  say "WebGPU adapter: $adapter ($DENO_WEBGPU_BACKEND); \`deno task doctor\` for its limits"
else
  say "deno is not on PATH: npm install -g deno@2.9.6 (then \`deno task doctor\`)"
fi
