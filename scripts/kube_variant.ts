// The Kubernetes manifests (deploy/kubernetes/) as data, and the one-replica variant of the
// Deployment that `podman kube play` can run (scripts/kube_test.sh): podman has no GPUs and no
// PersistentVolumeClaims, so the variant drops the GPU request and mounts a host directory as
// the model volume, and it publishes the container port on 127.0.0.1 only. Everything else (the
// image's settings, the probes, the grace period) is the real Deployment's.
//
//   deno run -A scripts/kube_variant.ts --model DIR --image IMAGE --host-port N --out FILE
//
// writes the variant to FILE and prints, as one JSON line, what the test script needs: the
// probes, the served model name, the `deno task generate` flags that match the server's
// settings, and the metric names the HPA and the endpoint picker read.

// An inline specifier until deno.json's imports map "yaml" (then: from "yaml").
// deno-lint-ignore no-import-prefix
import { parseAllDocuments, stringify } from "npm:yaml@2";

export const MANIFEST_DIR = new URL("../deploy/kubernetes/", import.meta.url).pathname;

// deno-lint-ignore no-explicit-any
export type Doc = Record<string, any>;

export interface Manifest {
  /** File name under deploy/kubernetes/. */
  file: string;
  doc: Doc;
}

/** Helm values files sit beside the manifests; they are not Kubernetes objects. */
export function isValuesFile(file: string): boolean {
  return file.endsWith("-values.yaml");
}

/** Every YAML document of one file (an error names the file and the problem). */
export function parseYaml(text: string, file: string): Doc[] {
  const out: Doc[] = [];
  for (const d of parseAllDocuments(text)) {
    if (d.errors.length > 0) throw new Error(`${file}: ${d.errors[0].message}`);
    const v = d.toJS();
    if (v !== null && v !== undefined) out.push(v);
  }
  return out;
}

/** Every Kubernetes object under deploy/kubernetes/ (*.yaml, less Helm values files). */
export function loadManifests(dir = MANIFEST_DIR): Manifest[] {
  const files = [...Deno.readDirSync(dir)]
    .filter((e) => e.isFile && e.name.endsWith(".yaml") && !isValuesFile(e.name))
    .map((e) => e.name)
    .sort();
  return files.flatMap((file) =>
    parseYaml(Deno.readTextFileSync(`${dir}${file}`), file).map((doc) => ({ file, doc }))
  );
}

/** The one object of `kind` named `name` (the first of the kind when no name is given). */
export function find(ms: readonly Manifest[], kind: string, name?: string): Doc {
  const m = ms.find((x) =>
    x.doc.kind === kind && (name === undefined || x.doc.metadata?.name === name)
  );
  if (!m) throw new Error(`no ${kind}${name ? ` named ${name}` : ""} under deploy/kubernetes/`);
  return m.doc;
}

/** The zigzag Deployment's container. */
export function zigzagContainer(deployment: Doc): Doc {
  const c = deployment.spec.template.spec.containers.find((x: Doc) => x.name === "zigzag");
  if (!c) throw new Error(`Deployment ${deployment.metadata.name} has no container "zigzag"`);
  return c;
}

/** A container port given by number or by name, as a number. */
export function resolvePort(container: Doc, port: number | string): number {
  if (typeof port === "number") return port;
  const p = (container.ports ?? []).find((x: Doc) => x.name === port);
  if (!p) throw new Error(`container ${container.name} has no port named ${port}`);
  return p.containerPort;
}

/** The container's plain env values (those set from a Secret or a field are left out). */
export function envValues(container: Doc): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of container.env ?? []) if (typeof e.value === "string") out[e.name] = e.value;
  return out;
}

/** The server settings that change what a greedy generation produces, as `generate` flags. */
const GENERATE_FLAGS: Record<string, string> = {
  ZIGZAG_PLAN: "--plan",
  ZIGZAG_SINK: "--sink",
  ZIGZAG_RECENT: "--recent",
  ZIGZAG_PRECISION: "--precision",
  ZIGZAG_KV_DTYPE: "--kv-dtype",
  ZIGZAG_WEIGHTS: "--weights",
  ZIGZAG_PREFILL_CHUNK: "--chunk",
  ZIGZAG_DECODE_STEPS: "--decode-steps",
  ZIGZAG_KV_CACHE_MB: "--kv-cache-mb",
  ZIGZAG_MAX_MODEL_LEN: "--max-model-len",
};

export function generateFlags(env: Record<string, string>): string[] {
  return Object.entries(GENERATE_FLAGS).flatMap(([v, f]) => v in env ? [f, env[v]] : []);
}

export interface VariantOptions {
  /** Host directory holding the model (mounted read-only at the container's /models). */
  modelDir: string;
  image: string;
  /** Host port, on 127.0.0.1, for the container port. */
  hostPort: number;
  /** Env values to override, e.g. a KV budget that suits a small model. */
  env?: Record<string, string>;
}

/**
 * The Deployment as `podman kube play` can run it: one replica, the given image, no GPU (and no
 * GPU toleration), the PVC replaced by a hostPath of the model directory, the container port
 * published on 127.0.0.1 only, and env values set from a Secret dropped (podman resolves
 * secretKeyRef against its own secrets; the API key Secret is optional anyway).
 */
export function kubePlayVariant(deployment: Doc, o: VariantOptions): Doc {
  const d: Doc = structuredClone(deployment);
  d.spec.replicas = 1;
  const pod = d.spec.template.spec;
  delete pod.tolerations;
  delete pod.nodeSelector;
  const c = zigzagContainer(d);
  c.image = o.image;
  c.imagePullPolicy = "Never";
  for (const k of ["requests", "limits"] as const) {
    const r = c.resources?.[k];
    if (!r) continue;
    delete r["nvidia.com/gpu"];
    if (Object.keys(r).length === 0) delete c.resources[k];
  }
  c.env = (c.env ?? []).filter((e: Doc) => !e.valueFrom?.secretKeyRef);
  for (const [name, value] of Object.entries(o.env ?? {})) {
    const e = c.env.find((x: Doc) => x.name === name);
    if (e) e.value = value;
    else c.env.push({ name, value });
  }
  const http = c.ports.find((p: Doc) => p.name === "http") ?? c.ports[0];
  http.hostPort = o.hostPort;
  http.hostIP = "127.0.0.1";
  const mount = c.volumeMounts.find((m: Doc) => m.mountPath === "/models");
  if (!mount) throw new Error("the zigzag container mounts nothing at /models");
  const vol = pod.volumes.find((v: Doc) => v.name === mount.name);
  if (!vol) throw new Error(`no volume named ${mount.name}`);
  delete vol.persistentVolumeClaim;
  vol.hostPath = { path: o.modelDir, type: "Directory" };
  return d;
}

/** What kube_test.sh checks, read off the manifests. */
export function testPlan(ms: readonly Manifest[], variant: Doc) {
  const c = zigzagContainer(variant);
  const probe = (k: string) => {
    const p = c[k]?.httpGet;
    return p ? { path: p.path as string, port: resolvePort(c, p.port) } : null;
  };
  const env = envValues(c);
  const hpa = find(ms, "HorizontalPodAutoscaler");
  const hpaMetrics = (hpa.spec.metrics ?? [])
    .filter((m: Doc) => m.type === "Pods")
    .map((m: Doc) => m.pods.metric.name as string);
  return {
    deployment: variant.metadata.name as string,
    container_port: resolvePort(c, "http"),
    probes: {
      startup: probe("startupProbe"),
      readiness: probe("readinessProbe"),
      liveness: probe("livenessProbe"),
    },
    served_model_name: env.ZIGZAG_SERVED_MODEL_NAME ?? null,
    grace_s: Number(env.ZIGZAG_GRACE_S ?? 30),
    termination_grace_s: variant.spec.template.spec.terminationGracePeriodSeconds as number,
    generate_flags: generateFlags(env),
    hpa_metrics: hpaMetrics,
    epp_metrics: eppMetricNames(ms),
  };
}

/** The endpoint picker's engineConfigs for zigzag (inferencepool.yaml's EPP ConfigMap). */
export function eppEngineConfig(ms: readonly Manifest[]): Doc {
  const pool = find(ms, "InferencePool");
  const eppName = pool.spec.endpointPickerRef.name;
  const cm = find(ms, "ConfigMap", eppName);
  const [cfg] = parseYaml(cm.data["config.yaml"], `ConfigMap ${eppName} config.yaml`);
  const ext = cfg.plugins.find((p: Doc) =>
    p.type === "model-server-protocol-metrics" || p.type === "core-metrics-extractor"
  );
  if (!ext) throw new Error(`ConfigMap ${eppName}: no model-server-protocol-metrics plugin`);
  const engine = ext.parameters.defaultEngine;
  const ec = ext.parameters.engineConfigs.find((e: Doc) => e.name === engine);
  if (!ec) throw new Error(`ConfigMap ${eppName}: no engineConfigs entry for "${engine}"`);
  return { ...ec, engineLabelKey: ext.parameters.engineLabelKey, defaultEngine: engine };
}

/** The metric names the endpoint picker scrapes ("" means not scraped). */
export function eppMetricNames(ms: readonly Manifest[]): Record<string, string> {
  const ec = eppEngineConfig(ms);
  const out: Record<string, string> = {};
  for (const k of ["queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec"]) {
    if (ec[k]) out[k] = ec[k];
  }
  return out;
}

if (import.meta.main) {
  const get = (flag: string) => {
    const i = Deno.args.indexOf(flag);
    const v = i < 0 ? undefined : Deno.args[i + 1];
    if (v === undefined) throw new Error(`kube_variant: missing ${flag}`);
    return v;
  };
  const env: Record<string, string> = {};
  for (let i = 0; i < Deno.args.length; i++) {
    if (Deno.args[i] === "--env") {
      const [k, ...v] = Deno.args[i + 1].split("=");
      env[k] = v.join("=");
    }
  }
  const ms = loadManifests();
  const variant = kubePlayVariant(find(ms, "Deployment", "zigzag"), {
    modelDir: get("--model"),
    image: get("--image"),
    hostPort: Number(get("--host-port")),
    env,
  });
  Deno.writeTextFileSync(
    get("--out"),
    `# generated by scripts/kube_variant.ts from deploy/kubernetes/deployment.yaml\n` +
      stringify(variant),
  );
  console.log(JSON.stringify(testPlan(ms, variant)));
}
