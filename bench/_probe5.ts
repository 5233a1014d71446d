import { PRESETS } from "../model/random.ts";
import { benchPlans } from "./plans.ts";
const dir = "../shared/duo-patterns/Llama-3-8B-Instruct-Gradient-1048k";
for (
  const [name, layers] of [
    ["smollm2-135m", 30],
    ["smollm2-135m", 2],
    ["smollm2-135m", 4],
    ["qwen2.5-0.5b", 24],
    ["llama-3.2-1b", 16],
    ["llama-3-8b", 32],
    ["llama-3.2-1b", 2],
  ] as const
) {
  const c = { ...PRESETS[name], nLayers: layers };
  for (const pd of [dir, null]) {
    const b = benchPlans(c, { sink: 64, recent: 256, budget: 0.5, patternDir: pd });
    console.log(
      name,
      layers,
      b.summaries.duo.source,
      "duo mixed",
      b.summaries.duo.mixed_layers,
      b.summaries.duo.retrieval_per_layer.join(","),
      "zig",
      b.summaries.zigzag.retrieval_layers.join(","),
    );
  }
}
