# zigzag: long-context LLM inference service, as a container in the Deno Deploy style.
#
#   docker build -t zigzag .
#   docker run --rm -p 8000:8000 -v /path/to/model:/models:ro zigzag
#
# The model is never part of the image: mount it at /models (or point ZIGZAG_MODEL elsewhere).
# Configuration is by environment variables only:
#   PORT               port to listen on (default 8000)
#   ZIGZAG_MODEL       model path inside the container (default /models)
#   ZIGZAG_TOKENIZER   tokenizer path, when it is not found beside the model
#   ZIGZAG_PLAN        attention plan: full | streaming | path to a plan file
#   ZIGZAG_KV_CACHE_MB KV-cache budget in MiB
#   ZIGZAG_API_KEY     when set, requests must carry this key
# GPU: on an NVIDIA host run with `--gpus all -e NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics`
# (the toolkit then injects the driver's Vulkan ICD); without a GPU, Mesa's lavapipe (CPU) is used.
#
# BASE is the official image; CI builds a local equivalent (scripts/container_test.sh).
ARG BASE=denoland/deno:debian-2.9.6
FROM ${BASE}

USER root

# Vulkan loader for the GPU driver's ICD, and Mesa's Vulkan drivers as the CPU fallback.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libvulkan1 mesa-vulkan-drivers \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

# The non-root user: the base image's `deno` (uid 1993), created if a base lacks it.
RUN if ! id -u deno >/dev/null 2>&1; then \
      groupadd -g 1993 deno && useradd -u 1993 -g deno -m -s /bin/sh deno; \
    fi \
 && mkdir -p /app /models /deno-dir \
 && chown deno:deno /app /deno-dir

# WebGPU on Vulkan: the GPU driver's ICD when one is passed in, else Mesa's lavapipe (never GL).
ENV DENO_DIR=/deno-dir/ \
    DENO_NO_UPDATE_CHECK=1 \
    DENO_NO_PROMPT=1 \
    DENO_WEBGPU_BACKEND=vulkan \
    XDG_RUNTIME_DIR=/tmp

WORKDIR /app
USER deno

# Only for builds behind a TLS-intercepting proxy: `--build-arg DENO_CERT=/tmp/ca.pem` with the
# proxy's CA bundle lent to the build, e.g. `podman build -v "$dir_with_ca_pem:/tmp" ...`.
ARG DENO_CERT

# Dependencies first, so that this layer is reused while only the sources change.
COPY --chown=deno:deno deno.json deno.lock* ./
RUN deno install

# The sources, and everything the entry points import, cached at build time: the container
# starts without a network (--cached-only below makes a missing module an error, not a fetch).
COPY --chown=deno:deno . .
RUN deno cache main.ts cli/generate.ts

ENV PORT=8000 \
    ZIGZAG_HOST=0.0.0.0 \
    ZIGZAG_MODEL=/models

EXPOSE 8000
VOLUME ["/models"]

# 200 once the model is loaded (503 while loading). curl is not in the image: deno fetches.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["deno", "eval", "--no-config", "const r = await fetch('http://127.0.0.1:' + (Deno.env.get('PORT') ?? '8000') + '/health'); Deno.exit(r.status === 200 ? 0 : 1);"]

CMD ["deno", "run", "-A", "--cached-only", "main.ts"]
