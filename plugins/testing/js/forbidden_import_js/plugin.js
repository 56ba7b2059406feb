// Test plugin `forbidden_import_js`: a JavaScript strategy that reads a key-value store, built against the world
// `strategy-with-store` of `plugins/testing/forbidden_import/wit`, so the component imports `wasi:keyvalue`,
// which is outside the sandbox's allowlist: the host must refuse it at load, naming the interface.

import { get } from "wasi:keyvalue/store@0.2.0-draft";

export const selector = {
  init(config) {},

  select(ctx, task, candidates, details) {
    return get("choice") % candidates.length;
  },
};
