package mcp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/jsonschema-go/jsonschema"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/sourcegraph/jsonrpc2"

	"github.com/msb-dev/msb/rpc"
)

// tool is one MCP tool and the JSON-RPC method it calls. Its arguments are
// the method's params, unchanged: the schema documents them for the
// assistant, and the method's own strict decoding enforces them.
type tool struct {
	name, method string
	title        string
	description  string
	schema       *jsonschema.Schema
	annotations  *sdk.ToolAnnotations
	// format turns the method's JSON result into the text of the tool result.
	format func(args, result json.RawMessage) string
}

func (t tool) tool() *sdk.Tool {
	return &sdk.Tool{Name: t.name, Title: t.title, Description: t.description, InputSchema: t.schema, Annotations: t.annotations}
}

// handler runs t's method as the caller of the request and reports the
// outcome as a tool result: text for the assistant, with IsError set when
// the method failed (invalid arguments, a namespace the key may not use, no
// such sandbox, ...). Protocol errors are left to the SDK.
func handler(inv Invoker, log *slog.Logger, t tool) sdk.ToolHandler {
	return func(ctx context.Context, req *sdk.CallToolRequest) (*sdk.CallToolResult, error) {
		ctx, cancel := callContext(ctx)
		defer cancel()
		started := time.Now()
		caller := callerOf(ctx)
		if caller == nil {
			// Only reachable if the handler was not mounted with
			// rpc.Server.Mount: refuse rather than run unauthenticated.
			log.Error("mcp tool call without an authenticated caller", "tool", t.name)
			return failure(t.name, rpc.CodeUnauthenticated, "the request was not authenticated"), nil
		}
		args := req.Params.Arguments
		if len(bytes.TrimSpace(args)) == 0 || bytes.Equal(bytes.TrimSpace(args), []byte("null")) {
			args = json.RawMessage("{}")
		}
		result, err := inv.Invoke(ctx, caller, t.method, args)
		if err == nil {
			var data []byte
			if data, err = json.Marshal(result); err == nil {
				log.Info("mcp", "tool", t.name, "key_id", caller.Principal.KeyID, "ms", time.Since(started).Milliseconds())
				return &sdk.CallToolResult{Content: []sdk.Content{&sdk.TextContent{Text: t.format(args, data)}}}, nil
			}
			err = fmt.Errorf("encode result of %s: %w", t.method, err)
		}
		code, msg := inv.ErrorCode(ctx, t.method, err)
		log.Info("mcp", "tool", t.name, "key_id", caller.Principal.KeyID, "code", code, "ms", time.Since(started).Milliseconds())
		return failure(t.name, code, msg), nil
	}
}

// failure is the tool result of a failed call: what went wrong, in the
// words of the JSON-RPC layer, and what the assistant can do about it.
func failure(tool string, code int64, msg string) *sdk.CallToolResult {
	text := fmt.Sprintf("%s failed (error %d): %s", tool, code, msg)
	if kind, ok := errorKinds[code]; ok {
		text = fmt.Sprintf("%s failed (%s): %s\n%s", tool, kind.what, msg, kind.hint)
	}
	res := &sdk.CallToolResult{Content: []sdk.Content{&sdk.TextContent{Text: text}}}
	res.IsError = true
	return res
}

// errorKinds names the JSON-RPC error codes of docs/api.md for an assistant.
var errorKinds = map[int64]struct{ what, hint string }{
	jsonrpc2.CodeInvalidParams: {"invalid arguments", "Check the arguments against the tool's input schema."},
	jsonrpc2.CodeInternalError: {"internal error", "The server could not do this: the message says why, or gives a reference for the server's log."},
	rpc.CodeConflict:           {"conflict with the sandbox's state", "If the sandbox is not running, start it with sandbox_start; if it runs with another config, stop it first or pick another name."},
	rpc.CodeUnauthenticated:    {"authentication failed", "The MCP client needs a valid msb API key in its Authorization header."},
	rpc.CodeNotFound:           {"not found", "Start the sandbox with sandbox_start first; sandbox_get_metrics lists the sandboxes that exist."},
	rpc.CodeForbidden:          {"permission denied", "This API key may not do this: use a namespace the key is for (ask the user which one) or a key with more rights."},
	rpc.CodeRateLimited:        {"rate limited", "Wait a little, then try again."},
}

// Argument schemas shared by the tools. Names and types are those of the
// JSON-RPC params (docs/api.md).
const namePattern = `^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`

func sandboxArg(what string) *jsonschema.Schema {
	return &jsonschema.Schema{Type: "string", Pattern: namePattern, Description: what +
		" 1-63 letters, digits, '-' and '_', starting with a letter or digit."}
}

func namespaceArg() *jsonschema.Schema {
	return &jsonschema.Schema{Type: "string", Pattern: namePattern, Description: `Namespace of the sandbox: use "default" unless the user names another. An API key may be limited to one namespace.`}
}

func timeoutArg(what string) *jsonschema.Schema {
	return &jsonschema.Schema{Type: "number", ExclusiveMinimum: jsonschema.Ptr(0.0),
		Description: "Optional. Seconds after which " + what + " (longer than the server's maximum, 24 hours unless configured, is cut to it). Without it the call waits until the work finishes."}
}

func stringList(desc string) *jsonschema.Schema {
	return &jsonschema.Schema{Type: "array", Items: &jsonschema.Schema{Type: "string"}, Description: desc}
}

func object(required []string, props map[string]*jsonschema.Schema) *jsonschema.Schema {
	return &jsonschema.Schema{Type: "object", Properties: props, Required: required, AdditionalProperties: &jsonschema.Schema{Not: &jsonschema.Schema{}}}
}

// configSchema documents sandbox.start's config. Unlisted fields are left
// to the method to accept or refuse, so a field added there needs no change
// here to work.
var configSchema = &jsonschema.Schema{
	Type:        "object",
	Description: "Optional. How to run the sandbox. Omit it to restart a sandbox with the config it last ran with (or the defaults).",
	Properties: map[string]*jsonschema.Schema{
		"image":      {Type: "string", Description: `Image to run, e.g. "microsandbox/python" (the default: Python 3) or "microsandbox/node" (Node.js). Which images exist is up to the server.`},
		"memory":     {Type: "integer", Minimum: jsonschema.Ptr(1.0), Description: "Memory limit in MiB (default 512)."},
		"cpus":       {Type: "integer", Minimum: jsonschema.Ptr(1.0), Description: "Number of CPUs (default 1)."},
		"disk":       {Type: "integer", Minimum: jsonschema.Ptr(64.0), Description: "Size in MiB of the sandbox's disk, which holds all it writes (default: the server's, 2048 unless its operator changed it)."},
		"envs":       stringList(`Environment variables as "KEY=VALUE".`),
		"workdir":    {Type: "string", Description: "Absolute working directory for code and commands (default /workspace)."},
		"shell":      {Type: "string", Description: "Shell for scripts (default /bin/sh)."},
		"scripts":    {Type: "object", AdditionalProperties: &jsonschema.Schema{Type: "string"}, Description: `Named shell scripts; the one named "start" runs in the background when the sandbox starts.`},
		"exec":       {Type: "string", Description: `Command run in the background when the sandbox starts (instead of scripts.start).`},
		"depends_on": stringList("Sandboxes of the same namespace that must already be running."),
		"volumes":    stringList(`Bind mounts "host:guest" (the server may refuse them).`),
		"ports":      stringList(`Port forwards "host:guest" (the server may refuse them).`),
		"network":    networkSchema("Optional. Outbound network. Without it the sandbox has none (unless the server's operator changed that default)."),
	},
}

// networkSchema documents a sandbox's network (sandbox.start's
// config.network, sandbox.network.update's network).
func networkSchema(what string) *jsonschema.Schema {
	return &jsonschema.Schema{
		Type: "object",
		Description: what + ` The sandbox reaches only what "allow" lists, through the server, which also answers its DNS;
private, loopback and link-local addresses (cloud metadata) and the server's own are always refused. Example for pip: {"enabled": true, "allow": ["pypi.org:443", "files.pythonhosted.org:443"]}.`,
		Properties: map[string]*jsonschema.Schema{
			"enabled":         {Type: "boolean", Description: "true for network, false for none."},
			"allow":           stringList(`Destinations the sandbox may reach: "pypi.org:443", "*.example.org:443" (every name below example.org), "203.0.113.0/24", "tcp example.org:80,443", "*" (everything public). Without it: the server's default for the namespace. The server may refuse destinations its operator does not allow.`),
			"deny":            stringList(`Destinations refused even if "allow" covers them, in the same form.`),
			"strict":          {Type: "boolean", Description: `true: nothing but "allow" (without "allow", nothing), instead of the server's default list.`},
			"max_connections": {Type: "integer", Minimum: jsonschema.Ptr(0.0), Description: "Connections open at once (0 or absent: the server's cap)."},
			"max_bandwidth":   {Type: "integer", Minimum: jsonschema.Ptr(0.0), Description: "Bytes per second each way (0 or absent: the server's cap)."},
		},
	}
}

// pathArg documents the path of a file tool.
func pathArg(what string) *jsonschema.Schema {
	return &jsonschema.Schema{Type: "string", MinLength: jsonschema.Ptr(1), Description: what +
		" A path inside the sandbox; a relative one is taken from the sandbox's working directory (/workspace unless configured)."}
}

// tools are msb's MCP tools, one per sandbox.* method (and sandbox.fs.*).
var tools = []tool{
	{
		name: "sandbox_start", method: "sandbox.start", title: "Start a sandbox",
		description: `Start an isolated Linux sandbox to run code and commands in (with sandbox_run_code and sandbox_run_command). It has no network access unless config.network asks for it (and the server allows it), and the files written in it are deleted when it stops.
Choose a short name and use the same sandbox and namespace in every later call. Starting a sandbox that already runs with the same config changes nothing, so it is safe to call again.
A sandbox keeps running, holding memory and CPU, until it is stopped: you must call sandbox_stop for every sandbox you start once you are done with it, also when a step failed.`,
		schema: object([]string{"sandbox", "namespace"}, map[string]*jsonschema.Schema{
			"sandbox":   sandboxArg("Name of the sandbox to start."),
			"namespace": namespaceArg(),
			"config":    configSchema,
		}),
		annotations: &sdk.ToolAnnotations{IdempotentHint: true, DestructiveHint: jsonschema.Ptr(false), OpenWorldHint: jsonschema.Ptr(false)},
		format:      formatStart,
	},
	{
		name: "sandbox_stop", method: "sandbox.stop", title: "Stop a sandbox",
		description: `Stop a sandbox started with sandbox_start: everything running in it is killed and the files written in it are deleted. Call it for every sandbox you started as soon as you no longer need it.`,
		schema: object([]string{"sandbox", "namespace"}, map[string]*jsonschema.Schema{
			"sandbox":   sandboxArg("Name of the sandbox to stop."),
			"namespace": namespaceArg(),
		}),
		annotations: &sdk.ToolAnnotations{IdempotentHint: true, DestructiveHint: jsonschema.Ptr(true), OpenWorldHint: jsonschema.Ptr(false)},
		format:      formatMessage,
	},
	{
		name: "sandbox_run_code", method: "sandbox.repl.run", title: "Run code in a sandbox",
		description: `Run Python or JavaScript code in a running sandbox and return what it printed.
Each sandbox keeps one live interpreter per language, like a notebook: variables, functions and imports from one call are still defined in the next. Only what the code prints comes back (the value of a last expression is not shown), so print the results you need.
The result starts with the status: success, error (the code raised; the traceback is under stderr) or timeout. Start the sandbox with sandbox_start first; for Node use a sandbox whose image has Node.`,
		schema: object([]string{"sandbox", "namespace", "language", "code"}, map[string]*jsonschema.Schema{
			"sandbox":   sandboxArg("Name of a running sandbox."),
			"namespace": namespaceArg(),
			"language":  {Type: "string", Enum: []any{"python", "nodejs", "node", "javascript"}, Description: `"python", or "nodejs" (also "node" or "javascript") for JavaScript.`},
			"code":      {Type: "string", Description: "The code to run. It may span many lines."},
			"timeout":   timeoutArg("the code is interrupted (status timeout)"),
		}),
		annotations: &sdk.ToolAnnotations{OpenWorldHint: jsonschema.Ptr(false)},
		format:      formatCode,
	},
	{
		name: "sandbox_run_command", method: "sandbox.command.run", title: "Run a command in a sandbox",
		description: `Run a program in a running sandbox and return its exit code and output.
The command is executed directly, not through a shell: give the program as command and each argument as an item of args. For pipes, redirection, globs, variables or several commands, use command "sh" with args ["-c", "<script>"].
Exit code 127 means the program was not found; a timeout kills the command and gives exit code 124. Start the sandbox with sandbox_start first.`,
		schema: object([]string{"sandbox", "namespace", "command"}, map[string]*jsonschema.Schema{
			"sandbox":   sandboxArg("Name of a running sandbox."),
			"namespace": namespaceArg(),
			"command":   {Type: "string", Description: `Program to run, e.g. "ls" or "/usr/bin/python3" or "sh".`},
			"args":      stringList("Arguments of the command, one per item."),
			"timeout":   timeoutArg("the command and everything it started are killed (exit code 124)"),
		}),
		annotations: &sdk.ToolAnnotations{OpenWorldHint: jsonschema.Ptr(false)},
		format:      formatCommand,
	},
	{
		name: "sandbox_update_network", method: "sandbox.network.update", title: "Change what a sandbox may reach on the network",
		description: `Change the outbound network of a sandbox started with sandbox_start: turn it on or off, or replace its allow and deny lists and limits. A running sandbox gets the change at once (its connections the new lists refuse are cut); the sandbox keeps it when started again.
Ask only for what the task needs, e.g. {"enabled": true, "allow": ["pypi.org:443", "files.pythonhosted.org:443"]} for pip. The server refuses destinations its operator does not allow for the namespace, and always refuses private and link-local addresses.`,
		schema: object([]string{"sandbox", "namespace", "network"}, map[string]*jsonschema.Schema{
			"sandbox":   sandboxArg("Name of the sandbox."),
			"namespace": namespaceArg(),
			"network":   networkSchema(`The sandbox's network from now on; "enabled" defaults to true here.`),
		}),
		annotations: &sdk.ToolAnnotations{IdempotentHint: true, DestructiveHint: jsonschema.Ptr(false), OpenWorldHint: jsonschema.Ptr(false)},
		format:      formatNetwork,
	},
	{
		name: "sandbox_get_metrics", method: "sandbox.metrics.get", title: "List sandboxes and their resource use",
		description: `List sandboxes with whether each is running and its CPU (percent of one CPU since the previous call), memory (MiB) and disk (bytes written) use. Stopped sandboxes the server remembers are listed too.
Use namespace "*" for every namespace this API key can see, and add sandbox to ask about one. Useful to check that you stopped every sandbox you started.`,
		schema: object([]string{"namespace"}, map[string]*jsonschema.Schema{
			"namespace": {Type: "string", Pattern: `^(\*|[A-Za-z0-9][A-Za-z0-9_-]{0,62})$`, Description: `Namespace to list, or "*" for all that this API key can see.`},
			"sandbox":   sandboxArg("Optional. Only this sandbox."),
		}),
		annotations: &sdk.ToolAnnotations{ReadOnlyHint: true, IdempotentHint: true, OpenWorldHint: jsonschema.Ptr(false)},
		format:      formatMetrics,
	},
	{
		name: "sandbox_read_file", method: "sandbox.fs.read", title: "Read a file in a sandbox",
		description: `Read a file inside a running sandbox. Text comes back as it is; a binary file as base64.
A large file is read in parts: give offset (bytes to skip) and length (bytes to read); the result says where to go on from.`,
		schema: object([]string{"sandbox", "namespace", "path"}, map[string]*jsonschema.Schema{
			"sandbox":   sandboxArg("Name of a running sandbox."),
			"namespace": namespaceArg(),
			"path":      pathArg("The file to read."),
			"offset":    {Type: "integer", Minimum: jsonschema.Ptr(0.0), Description: "Optional. Bytes of the file to skip (default 0)."},
			"length":    {Type: "integer", Minimum: jsonschema.Ptr(0.0), Description: "Optional. Most bytes to read (default: to the end, at most 16 MiB)."},
			"encoding":  {Type: "string", Enum: []any{"utf-8", "base64"}, Description: `Optional. "utf-8" for text, "base64" for any bytes; without it, text when the file is text.`},
		}),
		annotations: &sdk.ToolAnnotations{ReadOnlyHint: true, IdempotentHint: true, OpenWorldHint: jsonschema.Ptr(false)},
		format:      formatRead,
	},
	{
		name: "sandbox_write_file", method: "sandbox.fs.write", title: "Write a file in a sandbox",
		description: `Write a file inside a running sandbox: it is created, or replaced if it exists. Its directory must exist (make it with sandbox_run_command, "mkdir" with args ["-p", "<dir>"]).
Use it to put code or data into the sandbox instead of quoting it through a shell command.`,
		schema: object([]string{"sandbox", "namespace", "path", "content"}, map[string]*jsonschema.Schema{
			"sandbox":   sandboxArg("Name of a running sandbox."),
			"namespace": namespaceArg(),
			"path":      pathArg("The file to write."),
			"content":   {Type: "string", Description: `The whole content of the file: text, or base64 with encoding "base64".`},
			"encoding":  {Type: "string", Enum: []any{"utf-8", "base64"}, Description: `Optional. "utf-8" (the default) or "base64" for binary content.`},
			"mode":      {Types: []string{"integer", "string"}, Description: `Optional. Permissions of a new file, e.g. "755" for a script (default "644").`},
		}),
		annotations: &sdk.ToolAnnotations{IdempotentHint: true, DestructiveHint: jsonschema.Ptr(true), OpenWorldHint: jsonschema.Ptr(false)},
		format:      formatWrite,
	},
	{
		name: "sandbox_list_files", method: "sandbox.fs.list", title: "List a directory in a sandbox",
		description: `List the files and directories in a directory inside a running sandbox, with their kind, size and permissions.`,
		schema: object([]string{"sandbox", "namespace", "path"}, map[string]*jsonschema.Schema{
			"sandbox":   sandboxArg("Name of a running sandbox."),
			"namespace": namespaceArg(),
			"path":      pathArg("The directory to list, e.g. \"/workspace\"."),
		}),
		annotations: &sdk.ToolAnnotations{ReadOnlyHint: true, IdempotentHint: true, OpenWorldHint: jsonschema.Ptr(false)},
		format:      formatList,
	},
}
