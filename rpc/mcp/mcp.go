// Package mcp serves msb as a Model Context Protocol server, so that AI
// assistants (Claude, Cursor, any MCP client) can start sandboxes and run
// code in them as tools. It speaks the Streamable HTTP transport of the
// official Go SDK and is mounted on /mcp behind the same authentication as
// the JSON-RPC endpoint (see rpc.Server.Mount).
//
// Every tool is a thin adapter over one JSON-RPC method: its arguments are
// that method's params, passed unchanged to rpc.Server.Invoke. What a start
// or an exec does, and who may do it (key, namespace claim, scopes), is
// therefore decided in one place for both protocols; this package only turns
// the method's result or error into text an assistant can read.
package mcp

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/rpc"
)

// Path is where msb serves MCP.
const Path = "/mcp"

// Invoker runs JSON-RPC methods as a caller; *rpc.Server is the real one.
type Invoker interface {
	// Invoke runs method with params through the method table and its
	// authorization checks.
	Invoke(ctx context.Context, caller *auth.Caller, method string, params json.RawMessage) (any, error)
	// ErrorCode classifies an error of Invoke: its JSON-RPC code and the
	// message a client may see.
	ErrorCode(ctx context.Context, method string, err error) (int64, string)
}

// Options configure the handler.
type Options struct {
	// Logger receives one line per tool call and the SDK's own errors;
	// nil means slog.Default().
	Logger *slog.Logger
	// Version is reported to clients as the server's version.
	Version string
}

// NewHandler returns the MCP endpoint: tools and prompts served over
// Streamable HTTP. It must be mounted with rpc.Server.Mount, which
// authenticates each request and hands it the caller.
//
// The handler is stateless: every POST stands alone, with its own caller,
// and needs no session (so a client may POST a single tools/call without
// initializing), and answers are plain JSON rather than event streams. GET
// and DELETE, which only serve sessions, answer 405.
func NewHandler(inv Invoker, opts *Options) rpc.AuthedHandler {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	// The SDK logs every stateless session it opens and closes at Info;
	// only its warnings and errors are worth a line in msb's log.
	sdkLog := slog.New(minLevel{o.Logger.Handler(), slog.LevelWarn})
	server := newServer(inv, o.Logger, sdkLog, o.Version)
	h := sdk.NewStreamableHTTPHandler(func(*http.Request) *sdk.Server { return server }, &sdk.StreamableHTTPOptions{
		// Stateless: the SDK connects a fresh session per request with the
		// request's context, so tool handlers see that request's caller
		// (never the caller of an earlier request that opened a session).
		Stateless:                    true,
		JSONResponse:                 true,
		Logger:                       sdkLog,
		MaxRequestBodyBytes:          rpc.MaxBodyBytes,
		PropagateRequestCancellation: true,
	})
	return authedFunc(func(w http.ResponseWriter, r *http.Request, caller *auth.Caller) {
		// The SDK calls tool handlers with a context of its own that keeps
		// the request's values: the caller rides there, from this request
		// to its tool handlers and nowhere else. It does not keep the
		// request's cancellation, so the request context rides along too,
		// so that a client that hangs up stops its call, as on /api/v1/rpc.
		r = r.WithContext(context.WithValue(r.Context(), requestKey{}, request{r.Context(), caller}))
		if r.Method == http.MethodPost && plainJSONClient(r.Header.Values("Accept")) {
			// The SDK wants a POST to accept both JSON and event streams.
			// The answer is always JSON here, so a plain client that asks
			// for JSON only, or (like Go's and many others) sends no Accept
			// at all, is served too.
			r.Header.Set("Accept", "application/json, text/event-stream")
		}
		h.ServeHTTP(w, r)
	})
}

// plainJSONClient reports whether an Accept header is absent or accepts
// JSON but not event streams.
func plainJSONClient(accept []string) bool {
	all := strings.ToLower(strings.Join(accept, ","))
	if strings.TrimSpace(all) == "" {
		return true
	}
	return strings.Contains(all, "application/json") && !strings.Contains(all, "text/event-stream")
}

type requestKey struct{}

// request is what a tool handler needs of the HTTP request that carried
// its call.
type request struct {
	ctx    context.Context
	caller *auth.Caller
}

type authedFunc func(http.ResponseWriter, *http.Request, *auth.Caller)

func (f authedFunc) ServeAuthed(w http.ResponseWriter, r *http.Request, c *auth.Caller) { f(w, r, c) }

// callerOf returns the caller of the request that carried a tool call.
func callerOf(ctx context.Context) *auth.Caller {
	req, _ := ctx.Value(requestKey{}).(request)
	return req.caller
}

// minLevel is a slog.Handler that drops records below min.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(attrs []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(attrs), h.min}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.Handler.WithGroup(name), h.min}
}

// callContext returns the context a tool call runs in: ctx, cancelled also
// when the HTTP request that carried the call ends.
func callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	req, ok := ctx.Value(requestKey{}).(request)
	if !ok {
		return ctx, cancel
	}
	stop := context.AfterFunc(req.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// newServer builds the MCP server with msb's tools and prompts.
func newServer(inv Invoker, log, sdkLog *slog.Logger, version string) *sdk.Server {
	s := sdk.NewServer(&sdk.Implementation{Name: "msb", Title: "msb sandboxes", Version: version}, &sdk.ServerOptions{
		Instructions: instructions,
		Logger:       sdkLog,
		// No logging capability: msb sends no log messages to clients. The
		// tool and prompt lists never change (and a stateless server could
		// not say so), so listChanged stays off.
		Capabilities: &sdk.ServerCapabilities{Tools: &sdk.ToolCapabilities{}, Prompts: &sdk.PromptCapabilities{}},
	})
	for _, t := range tools {
		s.AddTool(t.tool(), handler(inv, log, t))
	}
	for _, p := range prompts {
		s.AddPrompt(p.prompt, p.handler)
	}
	return s
}

// instructions tell the assistant how the tools fit together.
const instructions = `msb runs code in isolated Linux sandboxes (no network access).
The usual flow: sandbox_start, then sandbox_run_code and sandbox_run_command as often as needed, then sandbox_stop.
sandbox_write_file, sandbox_read_file and sandbox_list_files move files in and out of a running sandbox without going through a shell.
Every call names the sandbox and its namespace; use "default" unless the user names another namespace (an API key may be limited to one namespace).
A sandbox keeps running, holding memory and CPU, until it is stopped: always call sandbox_stop for every sandbox you started once you are done, also when something failed. sandbox_get_metrics with namespace "*" lists the sandboxes that exist.`
