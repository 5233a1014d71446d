// The Kubernetes manifests (deploy/kubernetes/) against the server they deploy, without a GPU or
// a cluster: every file parses, every object has a known kind and apiVersion, and the fields
// that must agree with zigzag do — the image, the probes' paths (routes that exist) and ports
// (the container's), the GPU request, a grace period longer than the server's own drain
// (ZIGZAG_GRACE_S, server/config.ts's --grace-s default), every env name one server/config.ts
// reads and every value one it accepts, the HPA's target and metric, and the endpoint picker's
// metric names (gauges that routes/metrics.ts exports). `problems()` collects each disagreement
// as a sentence; mutated copies of the manifests prove it catches what it must. Also the
// `podman kube play` variant scripts/kube_test.sh runs (scripts/kube_variant.ts).

import assert from "node:assert/strict";
import { ConfigError, parseServerConfig } from "../server/config.ts";
import {
  type Doc,
  envValues,
  eppEngineConfig,
  find,
  isValuesFile,
  kubePlayVariant,
  loadManifests,
  type Manifest,
  MANIFEST_DIR,
  parseYaml,
  resolvePort,
  zigzagContainer,
} from "../scripts/kube_variant.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const CONFIG_SRC = Deno.readTextFileSync(`${ROOT}server/config.ts`);
const METRICS_SRC = Deno.readTextFileSync(`${ROOT}routes/metrics.ts`);
const ROUTES_SRC = [...Deno.readDirSync(`${ROOT}routes`)]
  .filter((e) => e.name.endsWith(".ts"))
  .map((e) => Deno.readTextFileSync(`${ROOT}routes/${e.name}`))
  .join("\n");

/** Each kind the manifests may hold, with its one apiVersion. */
const API_VERSIONS: Record<string, string> = {
  Deployment: "apps/v1",
  Service: "v1",
  PersistentVolumeClaim: "v1",
  ConfigMap: "v1",
  ServiceAccount: "v1",
  HorizontalPodAutoscaler: "autoscaling/v2",
  Role: "rbac.authorization.k8s.io/v1",
  RoleBinding: "rbac.authorization.k8s.io/v1",
  PodMonitor: "monitoring.coreos.com/v1",
  InferencePool: "inference.networking.k8s.io/v1",
  HTTPRoute: "gateway.networking.k8s.io/v1",
};
const REQUIRED_KINDS = [
  "Deployment",
  "Service",
  "PersistentVolumeClaim",
  "HorizontalPodAutoscaler",
  "InferencePool",
];
/** Variables the manifests may set that server/config.ts does not read: the Hub's (its
 * HubOptions), and the NVIDIA container toolkit's. */
const OTHER_ENV = new Set([
  "HF_HUB_OFFLINE",
  "HF_HOME",
  "HF_ENDPOINT",
  "NVIDIA_DRIVER_CAPABILITIES",
]);

/** The environment variables server/config.ts reads: every quoted ZIGZAG_* name, and PORT. */
export function configEnvNames(src = CONFIG_SRC): Set<string> {
  const names = new Set<string>();
  for (const m of src.matchAll(/"(ZIGZAG_[A-Z0-9_]+|PORT)"/g)) names.add(m[1]);
  return names;
}

/** The --grace-s default: `graceS: num({ ... }) ?? 30`. */
export function defaultGraceS(src = CONFIG_SRC): number {
  const m = src.match(/graceS:\s*num\([^)]*\)\s*\?\?\s*(\d+)/);
  assert.ok(m, "server/config.ts: no `graceS: num(...) ?? N` default found");
  return Number(m[1]);
}

/** The metric names routes/metrics.ts exports, with their types (`.gauge("name", ...)`). */
export function exportedMetrics(src = METRICS_SRC): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of src.matchAll(/\.(gauge|counter|histogram)\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"/g)) {
    out.set(m[2], m[1]);
  }
  return out;
}

/** `app.get("/health", ...)` in routes/: the paths a probe may GET. */
function routeExists(path: string): boolean {
  return ROUTES_SRC.includes(`app.get("${path}"`);
}

function labelsMatch(selector: Record<string, string> | undefined, labels: Doc): boolean {
  return !!selector && Object.keys(selector).length > 0 &&
    Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

/** Every disagreement between the manifests and the server, as one sentence each. */
export function problems(ms: readonly Manifest[], adapterValues: Doc[] = []): string[] {
  const out: string[] = [];
  const bad = (m: string) => out.push(m);
  const metrics = exportedMetrics();
  const gauge = (name: string, who: string) => {
    const t = metrics.get(name);
    if (t === undefined) bad(`${who}: metric ${name} is not one routes/metrics.ts exports`);
    else if (t !== "gauge") bad(`${who}: metric ${name} is a ${t}, not a gauge`);
  };

  for (const { file, doc } of ms) {
    const want = API_VERSIONS[doc.kind];
    if (want === undefined) bad(`${file}: unknown kind ${doc.kind}`);
    else if (doc.apiVersion !== want) {
      bad(`${file}: ${doc.kind} has apiVersion ${doc.apiVersion}, not ${want}`);
    }
    if (!doc.metadata?.name) bad(`${file}: a ${doc.kind} without metadata.name`);
  }
  for (const k of REQUIRED_KINDS) {
    if (!ms.some((m) => m.doc.kind === k)) bad(`no ${k} under deploy/kubernetes/`);
  }
  if (out.length) return out;

  // ---- the Deployment -----------------------------------------------------------------------
  const dep = find(ms, "Deployment", "zigzag");
  const pod = dep.spec.template.spec;
  const podLabels = dep.spec.template.metadata.labels;
  if (!labelsMatch(dep.spec.selector.matchLabels, podLabels)) {
    bad("Deployment: spec.selector does not match the pod template's labels");
  }
  const c = zigzagContainer(dep);
  if (!/(^|\/)zigzag(:|@|$)/.test(c.image)) bad(`Deployment: image ${c.image} is not zigzag's`);
  const http = (c.ports ?? []).find((p: Doc) => p.name === "http");
  if (!http) return [...out, "Deployment: the container has no port named http"];
  const port = http.containerPort;

  const env = envValues(c);
  const read = configEnvNames();
  for (const e of c.env ?? []) {
    if (!read.has(e.name) && !OTHER_ENV.has(e.name)) {
      bad(`Deployment: env ${e.name} is not a variable server/config.ts reads`);
    }
  }
  if (Number(env.PORT) !== port) {
    bad(`Deployment: PORT=${env.PORT} but the container port is ${port}`);
  }
  try {
    const cfg = parseServerConfig([], (n) => env[n]);
    if (cfg === "help") throw new Error("help");
    if (cfg.host !== "0.0.0.0") {
      bad(`Deployment: ZIGZAG_HOST=${cfg.host} is not reachable from the pod network`);
    }
    const mounts = (c.volumeMounts ?? []).map((m: Doc) => m.mountPath as string);
    if (!mounts.some((p: string) => cfg.model === p || cfg.model.startsWith(`${p}/`))) {
      bad(`Deployment: ZIGZAG_MODEL=${cfg.model} is on no volume mount`);
    }
  } catch (e) {
    const why = e instanceof ConfigError ? e.line : (e as Error).message;
    bad(`Deployment: server/config.ts rejects the env: ${why}`);
  }

  const probePort = (name: string, p: Doc) => {
    try {
      const n = resolvePort(c, p.port);
      if (n !== port) bad(`Deployment: ${name} probes port ${n}, not the container port ${port}`);
    } catch (e) {
      bad(`Deployment: ${name}: ${(e as Error).message}`);
    }
  };
  for (const name of ["startupProbe", "readinessProbe", "livenessProbe"]) {
    const g = c[name]?.httpGet;
    if (!g) {
      bad(`Deployment: no httpGet ${name}`);
      continue;
    }
    if (!routeExists(g.path)) bad(`Deployment: ${name} GETs ${g.path}, which no route serves`);
    probePort(name, g);
  }
  if (c.readinessProbe?.httpGet?.path !== "/health") {
    bad("Deployment: the readiness probe must GET /health (503 while loading and draining)");
  }
  // /health is 503 while loading: liveness waits for the startup probe, which must wait long
  // enough for an 8B model's weights (10 minutes at least).
  const window = (p: Doc | undefined) => (p?.periodSeconds ?? 10) * (p?.failureThreshold ?? 3);
  if (c.startupProbe?.httpGet?.path !== "/health") {
    bad("Deployment: the startup probe must GET /health, so liveness waits for loading");
  } else if (window(c.startupProbe) < 600) {
    bad(`Deployment: the startup probe gives loading only ${window(c.startupProbe)} s`);
  }

  const gpu = (k: string) => c.resources?.[k]?.["nvidia.com/gpu"];
  if (Number(gpu("limits")) !== 1) bad("Deployment: no nvidia.com/gpu: 1 limit");
  if (gpu("requests") !== undefined && Number(gpu("requests")) !== 1) {
    bad("Deployment: the nvidia.com/gpu request is not 1");
  }

  const graceDefault = defaultGraceS();
  const graceS = Number(env.ZIGZAG_GRACE_S ?? graceDefault);
  if (env.ZIGZAG_GRACE_S === undefined) bad("Deployment: ZIGZAG_GRACE_S is not set");
  else if (graceS !== graceDefault) {
    bad(`Deployment: ZIGZAG_GRACE_S=${graceS}, not --grace-s's default ${graceDefault}`);
  }
  const preStop = c.lifecycle?.preStop?.exec?.command;
  const preStopS = Array.isArray(preStop) && preStop[0] === "sleep" ? Number(preStop[1]) : 0;
  const tgp = pod.terminationGracePeriodSeconds;
  if (typeof tgp !== "number" || tgp <= graceS + preStopS) {
    bad(
      `Deployment: terminationGracePeriodSeconds ${tgp} is not more than ZIGZAG_GRACE_S ` +
        `(${graceS}) + the preStop sleep (${preStopS})`,
    );
  } else if (tgp > graceS + preStopS + 30) {
    bad(`Deployment: terminationGracePeriodSeconds ${tgp} is far beyond the server's drain`);
  }
  if (window(c.livenessProbe) <= (tgp ?? 0)) {
    bad("Deployment: the liveness probe could kill a draining pod within the grace period");
  }

  const vol = pod.volumes?.find((v: Doc) =>
    v.name === c.volumeMounts?.find((m: Doc) => m.mountPath === "/models")?.name
  );
  const pvc = ms.find((m) => m.doc.kind === "PersistentVolumeClaim")!.doc;
  if (vol?.persistentVolumeClaim?.claimName !== pvc.metadata.name) {
    bad(`Deployment: /models is not the PersistentVolumeClaim ${pvc.metadata.name}`);
  }

  // ---- Service, HPA, PodMonitor, prometheus-adapter -----------------------------------------
  const svc = find(ms, "Service", dep.metadata.name);
  if (!labelsMatch(svc.spec.selector, podLabels)) bad("Service: selects no zigzag pod");
  for (const p of svc.spec.ports) {
    try {
      if (resolvePort(c, p.targetPort) !== port) {
        bad(`Service: targetPort ${p.targetPort} is not ${port}`);
      }
    } catch (e) {
      bad(`Service: ${(e as Error).message}`);
    }
  }

  const hpa = find(ms, "HorizontalPodAutoscaler");
  const ref = hpa.spec.scaleTargetRef;
  if (ref.apiVersion !== "apps/v1" || ref.kind !== "Deployment" || ref.name !== dep.metadata.name) {
    bad(
      `HorizontalPodAutoscaler: scales ${ref.kind} ${ref.name}, not Deployment ${dep.metadata.name}`,
    );
  }
  const podMetrics = (hpa.spec.metrics ?? []).filter((m: Doc) => m.type === "Pods");
  if (podMetrics.length === 0) bad("HorizontalPodAutoscaler: no Pods metric (queue length)");
  for (const m of podMetrics) gauge(m.pods.metric.name, "HorizontalPodAutoscaler");
  if (!(hpa.spec.minReplicas >= 1 && hpa.spec.maxReplicas >= hpa.spec.minReplicas)) {
    bad("HorizontalPodAutoscaler: replicas are not 1 <= min <= max");
  }
  for (const values of adapterValues) {
    const rules = values.rules?.custom ?? [];
    for (const m of podMetrics) {
      const name = m.pods.metric.name;
      const rule = rules.find((r: Doc) => r.name?.as === name);
      if (!rule) bad(`prometheus-adapter values: no rule serves ${name}`);
      else if (!String(rule.seriesQuery).startsWith(`${name}{`)) {
        bad(`prometheus-adapter values: the rule for ${name} queries ${rule.seriesQuery}`);
      }
    }
  }

  for (const { doc } of ms.filter((m) => m.doc.kind === "PodMonitor")) {
    if (!labelsMatch(doc.spec.selector.matchLabels, podLabels)) {
      bad("PodMonitor: selects no zigzag pod");
    }
    for (const e of doc.spec.podMetricsEndpoints) {
      if (e.path !== "/metrics" || !routeExists(e.path)) bad(`PodMonitor: scrapes ${e.path}`);
      if (!(c.ports ?? []).some((p: Doc) => p.name === e.port)) {
        bad(`PodMonitor: no port ${e.port}`);
      }
    }
  }

  // ---- the Inference Extension --------------------------------------------------------------
  const pool = find(ms, "InferencePool");
  if (!labelsMatch(pool.spec.selector?.matchLabels, podLabels)) {
    bad("InferencePool: selects no zigzag pod");
  }
  const tps = (pool.spec.targetPorts ?? []).map((p: Doc) => p.number);
  if (tps.length !== 1 || tps[0] !== port) {
    bad(`InferencePool: targetPorts ${tps} are not [${port}]`);
  }
  const epp = pool.spec.endpointPickerRef;
  const eppSvc = ms.find((m) => m.doc.kind === "Service" && m.doc.metadata.name === epp?.name);
  if (!eppSvc) bad(`InferencePool: endpointPickerRef names no Service (${epp?.name})`);
  else if (!eppSvc.doc.spec.ports.some((p: Doc) => p.port === epp.port?.number)) {
    bad(`InferencePool: the picker's Service has no port ${epp.port?.number}`);
  }
  let ec: Doc | undefined;
  try {
    ec = eppEngineConfig(ms);
  } catch (e) {
    bad(`InferencePool: ${(e as Error).message}`);
  }
  if (ec) {
    for (const k of ["queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec"]) {
      if (!ec[k]) bad(`endpoint picker: engineConfigs ${ec.name} has no ${k}`);
      else gauge(ec[k], `endpoint picker ${k}`);
    }
    for (const k of ["loraSpec", "cacheInfoSpec"]) {
      if (ec[k]) gauge(ec[k], `endpoint picker ${k}`);
    }
    const label = podLabels[ec.engineLabelKey ?? "inference.networking.k8s.io/engine-type"];
    if (label !== ec.name) {
      bad(`endpoint picker: the zigzag pods' engine label is ${label}, not ${ec.name}`);
    }
  }
  const eppDep = ms.find((m) => m.doc.kind === "Deployment" && m.doc.metadata.name === epp?.name)
    ?.doc;
  const args: string[] = eppDep?.spec.template.spec.containers[0].args ?? [];
  if (!args.includes(`--pool-name=${pool.metadata.name}`)) {
    bad(`endpoint picker: its Deployment does not watch --pool-name=${pool.metadata.name}`);
  }
  const route = ms.find((m) => m.doc.kind === "HTTPRoute")?.doc;
  const backends = (route?.spec.rules ?? []).flatMap((r: Doc) => r.backendRefs ?? []);
  if (
    !backends.some((b: Doc) =>
      b.kind === "InferencePool" && b.group === "inference.networking.k8s.io" &&
      b.name === pool.metadata.name
    )
  ) bad("HTTPRoute: does not route to the InferencePool");
  return out;
}

function adapterValues(): Doc[] {
  return [...Deno.readDirSync(MANIFEST_DIR)]
    .filter((e) => isValuesFile(e.name) && e.name.startsWith("prometheus-adapter"))
    .flatMap((e) => parseYaml(Deno.readTextFileSync(`${MANIFEST_DIR}${e.name}`), e.name));
}

/** A deep copy of the manifests with `edit` applied to the first object of `kind`. */
function mutated(kind: string, edit: (d: Doc) => void, name?: string): Manifest[] {
  const ms = structuredClone(loadManifests());
  edit(find(ms, kind, name));
  return ms;
}

Deno.test("deploy: every manifest parses, and agrees with the server it deploys", () => {
  const ms = loadManifests();
  assert.ok(ms.length >= 8, `only ${ms.length} objects under deploy/kubernetes/`);
  assert.deepEqual(problems(ms, adapterValues()), []);
});

Deno.test("deploy: the sources it checks against are what the checks assume", () => {
  // If these fail, the checks above have silently stopped checking.
  const names = configEnvNames();
  for (const n of ["ZIGZAG_MODEL", "ZIGZAG_GRACE_S", "ZIGZAG_KV_CACHE_MB", "PORT"]) {
    assert.ok(names.has(n), `server/config.ts reads no ${n}?`);
  }
  assert.equal(defaultGraceS(), 30);
  const m = exportedMetrics();
  assert.equal(m.get("zigzag_requests_waiting"), "gauge");
  assert.equal(m.get("zigzag_kv_cache_usage_ratio"), "gauge");
  assert.equal(m.get("zigzag_prompt_tokens_total"), "counter");
  assert.ok(routeExists("/health") && routeExists("/metrics") && !routeExists("/healthz"));
});

Deno.test("deploy: a wrong name, port or period fails the checks", () => {
  const cases: [string, Manifest[], RegExp][] = [
    [
      "HPA metric",
      mutated("HorizontalPodAutoscaler", (d) => {
        d.spec.metrics[0].pods.metric.name = "zigzag_requests_queued";
      }),
      /HorizontalPodAutoscaler: metric zigzag_requests_queued is not one routes\/metrics.ts exports/,
    ],
    [
      "HPA on a counter",
      mutated("HorizontalPodAutoscaler", (d) => {
        d.spec.metrics[0].pods.metric.name = "zigzag_requests_rejected_total";
      }),
      /zigzag_requests_rejected_total is a counter, not a gauge/,
    ],
    [
      "HPA target",
      mutated("HorizontalPodAutoscaler", (d) => {
        d.spec.scaleTargetRef.name = "zigzag-old";
      }),
      /scales Deployment zigzag-old/,
    ],
    [
      "env name",
      mutated("Deployment", (d) => {
        zigzagContainer(d).env.push({ name: "ZIGZAG_MAX_BATCHES", value: "8" });
      }, "zigzag"),
      /env ZIGZAG_MAX_BATCHES is not a variable server\/config.ts reads/,
    ],
    [
      "env value",
      mutated("Deployment", (d) => {
        zigzagContainer(d).env.find((e: Doc) => e.name === "ZIGZAG_KV_DTYPE").value = "int3";
      }, "zigzag"),
      /server\/config.ts rejects the env: .*ZIGZAG_KV_DTYPE/,
    ],
    [
      "grace period",
      mutated("Deployment", (d) => {
        d.spec.template.spec.terminationGracePeriodSeconds = 30;
      }, "zigzag"),
      /terminationGracePeriodSeconds 30 is not more than ZIGZAG_GRACE_S/,
    ],
    [
      "probe port",
      mutated("Deployment", (d) => {
        zigzagContainer(d).readinessProbe.httpGet.port = 8080;
      }, "zigzag"),
      /readinessProbe probes port 8080, not the container port 8000/,
    ],
    [
      "probe path",
      mutated("Deployment", (d) => {
        zigzagContainer(d).livenessProbe.httpGet.path = "/healthz";
      }, "zigzag"),
      /livenessProbe GETs \/healthz, which no route serves/,
    ],
    [
      "no startup probe",
      mutated("Deployment", (d) => {
        delete zigzagContainer(d).startupProbe;
      }, "zigzag"),
      /no httpGet startupProbe/,
    ],
    [
      "GPU",
      mutated("Deployment", (d) => {
        delete zigzagContainer(d).resources.limits["nvidia.com/gpu"];
      }, "zigzag"),
      /no nvidia.com\/gpu: 1 limit/,
    ],
    [
      "apiVersion",
      mutated("InferencePool", (d) => {
        d.apiVersion = "inference.networking.x-k8s.io/v1alpha2";
      }),
      /InferencePool has apiVersion inference.networking.x-k8s.io\/v1alpha2/,
    ],
    [
      "picker metric",
      mutated("ConfigMap", (d) => {
        d.data["config.yaml"] = d.data["config.yaml"].replace(
          "kvUsageSpec: zigzag_kv_cache_usage_ratio",
          "kvUsageSpec: zigzag_kv_cache_usage_perc",
        );
      }, "zigzag-epp"),
      /endpoint picker kvUsageSpec: metric zigzag_kv_cache_usage_perc is not one/,
    ],
    [
      "pool port",
      mutated("InferencePool", (d) => {
        d.spec.targetPorts[0].number = 8080;
      }),
      /InferencePool: targetPorts 8080 are not \[8000\]/,
    ],
  ];
  for (const [what, ms, want] of cases) {
    const found = problems(ms, adapterValues());
    assert.ok(
      found.some((p) => want.test(p)),
      `${what}: wanted ${want}, got ${JSON.stringify(found)}`,
    );
  }
  const values = adapterValues();
  values[0].rules.custom[0].name.as = "zigzag_waiting";
  assert.ok(
    problems(loadManifests(), values).some((p) => /no rule serves zigzag_requests_waiting/.test(p)),
  );
});

Deno.test("deploy: the podman kube play variant differs only where podman must", () => {
  const dep = find(loadManifests(), "Deployment", "zigzag");
  const v = kubePlayVariant(dep, {
    modelDir: "/srv/models/stories260K",
    image: "localhost/zigzag:container-test",
    hostPort: 18000,
    env: { ZIGZAG_KV_CACHE_MB: "64" },
  });
  assert.equal(v.spec.replicas, 1);
  const c = zigzagContainer(v);
  assert.equal(c.image, "localhost/zigzag:container-test");
  assert.equal(JSON.stringify(c.resources).includes("nvidia.com/gpu"), false);
  assert.deepEqual(c.ports[0], {
    ...zigzagContainer(dep).ports[0],
    hostPort: 18000,
    hostIP: "127.0.0.1",
  });
  const vol = v.spec.template.spec.volumes.find((x: Doc) => x.name === "model");
  assert.deepEqual(vol, {
    name: "model",
    hostPath: { path: "/srv/models/stories260K", type: "Directory" },
  });
  assert.equal(envValues(c).ZIGZAG_KV_CACHE_MB, "64");
  assert.equal(envValues(c).ZIGZAG_GRACE_S, envValues(zigzagContainer(dep)).ZIGZAG_GRACE_S);
  for (const p of ["startupProbe", "readinessProbe", "livenessProbe", "lifecycle"]) {
    assert.deepEqual(c[p], zigzagContainer(dep)[p], p);
  }
  assert.equal(
    v.spec.template.spec.terminationGracePeriodSeconds,
    dep.spec.template.spec.terminationGracePeriodSeconds,
  );
  // The original is untouched.
  assert.ok(JSON.stringify(zigzagContainer(dep).resources).includes("nvidia.com/gpu"));
});
