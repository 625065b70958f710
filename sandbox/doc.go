// Package sandbox is msb's sandbox domain: what a sandbox is (ID, Config,
// Record), the Service that owns every sandbox's lifecycle, and the small
// interfaces an isolation engine implements (Runtime, Executor, REPL,
// StatsReader, ExitWatcher). The service decides; engines only do and
// report.
//
// Below it: the Linux engine (namespaces, cgroups, its own launcher) in sandbox/linux,
// found by name through sandbox/engine; the in-sandbox agent and its wire
// protocol in sandbox/portal; OCI images in sandbox/image; the conformance
// suite every engine must pass, and an in-memory engine for the service's
// own tests, in sandbox/sandboxtest. Nothing here knows about any wire
// format: the front-ends (rpc, rpc/mcp) map theirs onto Config and call
// the Service.
package sandbox
