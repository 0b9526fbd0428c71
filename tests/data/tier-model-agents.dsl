// The agent definitions of Symbiont's tier model (shared/reference/tier-model.md),
// kept here so the grammar tests run in any checkout.

agent NativeWorker {
  metadata { name: "Local Development Agent" version: "1.0.0" }
  security { tier: None sandbox: Permissive capabilities: ["local_filesystem", "network"] }
  on trigger "local_processing" { execute_native("python3 process.py") }
}
