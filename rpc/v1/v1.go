// Package v1 serves the microsandbox "cloud" API that today's microsandbox
// SDKs speak (npm microsandbox 0.6.x and the Rust, Python, Go and Ruby
// SDKs on the same core): REST under /v1/..., the agent WebSocket of
// /v1/sandboxes/{id}/agent that carries the guest agent's framed CBOR
// protocol (rpc/v1/agent), and the logs as server-sent events. It is a
// front-end beside rpc (JSON-RPC) and rpc/mcp: the same sandboxes, keys,
// namespaces, scopes, limits and audit.
//
// Every request takes one path: auth.Gate.Authenticate, then for each
// operation an auth.Action (named "v1: <route>") that the Gate charges
// and authorizes before it runs and audits after (Call.admit and
// Call.report); handlers only ever see an admitted call. The v1 API has
// no namespace parameter: a key of one namespace acts in it, a key of
// every namespace ("*") in "default". Another namespace's sandboxes and
// volumes do not exist for a key (404).
//
// Wire types (wire.go) map onto the domain's (sandbox.Config,
// sandbox.Record, sandbox.ExecSpec); errors map onto the v1 envelope
// {"error":{"code","message"}} through the one table of errors.go.
package v1

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/namespace"
	"github.com/msb-dev/msb/rpc"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/logfile"
	"github.com/msb-dev/msb/sandbox/volume"
)

// Prefix is where the API is served.
const Prefix = "/v1/"

// DefaultNamespace is where a key of every namespace acts: the v1 API
// names no namespace.
const DefaultNamespace = "default"

// Service is what the API asks of the sandbox service: their lifecycle,
// by name and by id. (sandbox.Sessions cannot be part of it: its
// FileSystem's List and Remove have other signatures than Lifecycles'
// of the same names, so no one type implements both; the Service's
// sessions come as a value of their own.)
type Service interface {
	sandbox.Manager
	sandbox.Lifecycles
}

// Volumes keeps named volumes and reaches their files; *volume.Store is
// the real one. A name "" is the namespace's default volume.
type Volumes interface {
	List(ns string) ([]volume.Info, error)
	Get(ns, name string) (volume.Info, error)
	Create(ns, name string, labels map[string]string) (volume.Info, error)
	Delete(ns, name string) error
	Default(ns string) (volume.Info, error)
	Open(ns, name string) (*volume.Dir, error)
	// Path is the host directory of a volume ("": the default volume).
	Path(ns, name string) (string, error)
}

// Logs reads and adds to sandboxes' logs; logfile.Dir is the real one.
type Logs interface {
	// Open returns a reader of the sandbox's log; an error wrapping
	// os.ErrNotExist when it has none yet.
	Open(ns, name string) (*logfile.Reader, error)
	// Append returns a writer adding to the log's current run.
	Append(ns, name string) (*logfile.Writer, error)
}

// Handler serves the v1 API.
type Handler struct {
	gate     *auth.Gate
	svc      Service
	sessions sandbox.Sessions
	vols     Volumes
	logs     Logs
	log      *slog.Logger
	// now is the clock of the agent's ready message.
	now func() time.Time

	// creating holds the sandboxes being created, so that two creates of
	// one name cannot both succeed.
	mu       sync.Mutex
	creating map[sandbox.ID]bool
}

// New returns the v1 API of the sandbox service svc, whose streams and
// files are sessions, whose callers gate admits. Mount it on Prefix.
func New(gate *auth.Gate, svc Service, sessions sandbox.Sessions, volumes Volumes, logs Logs, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.Default()
	}
	return &Handler{gate: gate, svc: svc, sessions: sessions, vols: volumes, logs: logs, log: log, now: time.Now, creating: map[sandbox.ID]bool{}}
}

// route is one operation of the API.
type route struct {
	name    string // the audit's method, after "v1: "
	scope   auth.Scope
	changes bool
	start   bool
	// byName routes name their sandbox by name, the others by id.
	byName bool
	// notFound and invalid are the codes of errors of classes NotFound and
	// Invalid on this route (errors.go).
	notFound, invalid string
	serve             func(c *Call)
}

// Call is one request of a route: who makes it, in which namespace, and
// the Action the Gate admits (Call.admit) and audits (Call.report).
type Call struct {
	h      *Handler
	w      http.ResponseWriter
	r      *http.Request
	route  *route
	caller *auth.Caller
	action auth.Action
	// NS is the namespace the call acts in.
	NS string
	// args are the route's path parameters (a name or an id).
	args     []string
	reported bool
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt, args, allow := match(r)
	what := "unknown route"
	if rt != nil {
		what = rt.name
	}
	caller, err := h.gate.Authenticate(r.Context(), rpc.KeyFromRequest(r), remoteHost(r.RemoteAddr), func() string { return "v1: " + what })
	if err != nil {
		h.writeError(w, nil, nil, err)
		return
	}
	if rt == nil {
		if allow != "" {
			w.Header().Set("Allow", allow)
			h.writeError(w, caller, nil, &codedError{code: "method_not_allowed", status: http.StatusMethodNotAllowed,
				err: errdefs.Invalidf("%s is not allowed on %s: use %s", r.Method, r.URL.Path, allow)})
			return
		}
		h.writeError(w, caller, nil, &codedError{code: "not_found", err: errdefs.NotFoundf("no route %s %s in the v1 API", r.Method, truncate(r.URL.Path))})
		return
	}
	c := &Call{h: h, w: w, r: r, route: rt, caller: caller, args: args, NS: callerNamespace(caller.Principal)}
	c.action = auth.Action{Name: "v1: " + rt.name, Scope: rt.scope, Changes: rt.changes, Start: rt.start,
		Namespaced: true, Namespace: c.NS}
	defer func() {
		if !c.reported {
			// A handler that panicked or forgot: the call still counts.
			c.report(errdefs.New(errdefs.Internal, "the call did not finish"))
		}
	}()
	rt.serve(c)
}

// callerNamespace is the namespace a key acts in: its own, or "default"
// for a key of every namespace.
func callerNamespace(p auth.Principal) string {
	if p.Namespace == namespace.All || p.Namespace == "" {
		return DefaultNamespace
	}
	return p.Namespace
}

// admit charges the call to the caller's rate and authorizes it: scope,
// then validate (if not nil: a caller without the scope learns nothing
// of what is wrong with its request), then namespace and usage limit.
func (c *Call) admit(validate func() error) error {
	if err := c.h.gate.Charge(c.caller, &c.action); err != nil {
		return err
	}
	return c.h.gate.Authorize(c.r.Context(), c.caller, &c.action, validate)
}

// report tells the Gate how the call ended, which audits it (changes and
// refusals), once. It waits until the audit event is written, so a read
// of the log after the answer sees it.
func (c *Call) report(err error) {
	if c.reported {
		return
	}
	c.reported = true
	c.h.gate.Done(c.caller, c.action, err)
}

// finish reports the call and answers it: v as JSON with status 200, or
// the error envelope of err.
func (c *Call) finish(v any, err error) {
	c.report(err)
	if err != nil {
		c.h.writeError(c.w, c.caller, c.route, err)
		return
	}
	c.writeJSON(http.StatusOK, v)
}

// fail answers a call with err.
func (c *Call) fail(err error) { c.finish(nil, err) }

// writeJSON answers with v and the rate headers.
func (c *Call) writeJSON(status int, v any) {
	c.writeRateHeaders(status)
	writeJSON(c.w, status, v)
}

// writeRateHeaders sets the rate headers of the call's answer.
func (c *Call) writeRateHeaders(status int) {
	rpc.SetRateHeaders(c.w.Header(), c.h.gate.Policy, c.caller, status)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// MaxBodyBytes bounds a JSON request body.
const MaxBodyBytes = rpc.MaxBodyBytes

// decodeBody decodes the request's JSON body into v strictly: an unknown
// field is an error naming it. An empty body is {}. Errors are of class
// Invalid.
func (c *Call) decodeBody(v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(c.w, c.r.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return &codedError{code: "invalid_request", status: http.StatusRequestEntityTooLarge,
				err: errdefs.Invalidf("the request body is larger than %d MiB", MaxBodyBytes>>20)}
		}
		return errdefs.Invalidf("could not read the request body: %v", err)
	}
	return decodeStrict(body, v)
}

func decodeStrict(body []byte, v any) error {
	if len(strings.TrimSpace(string(body))) == 0 {
		body = []byte("{}")
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errdefs.Invalidf("the request body is not valid: %s", describeJSONError(err))
	}
	if dec.More() {
		return errdefs.Invalidf("the request body holds more than one JSON value")
	}
	return nil
}

func describeJSONError(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) && typeErr.Field != "" {
		return fmt.Sprintf("%q must not be %s", typeErr.Field, typeErr.Value)
	}
	if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return fmt.Sprintf("unknown field %s: msb does not know it, so it cannot honour it", msg)
	}
	return err.Error()
}

// match finds the route of a request and its path parameters; when the
// path is known but not the method, allow lists the methods it takes.
func match(r *http.Request) (rt *route, args []string, allow string) {
	p, ok := strings.CutPrefix(r.URL.EscapedPath(), Prefix)
	if !ok {
		return nil, nil, ""
	}
	segs := strings.Split(strings.TrimSuffix(p, "/"), "/")
	for i, s := range segs {
		u, err := url.PathUnescape(s)
		if err != nil {
			return nil, nil, ""
		}
		segs[i] = u
	}
	var methods map[string]*route
	switch {
	case len(segs) >= 3 && segs[0] == "sandboxes" && segs[1] == "by-name":
		args = segs[2:3]
		methods = byName[strings.Join(segs[3:], "/")]
	case len(segs) >= 1 && segs[0] == "sandboxes":
		if len(segs) == 1 {
			methods = sandboxesRoot
			break
		}
		args = segs[1:2]
		methods = byID[strings.Join(segs[2:], "/")]
	case len(segs) == 2 && segs[0] == "volumes" && segs[1] == "default":
		methods = volumeDefault
	case len(segs) >= 1 && segs[0] == "volumes":
		if len(segs) == 1 {
			methods = volumesRoot
			break
		}
		args = segs[1:2]
		methods = volumeByID[strings.Join(segs[2:], "/")]
	}
	if methods == nil {
		return nil, nil, ""
	}
	if rt := methods[r.Method]; rt != nil {
		return rt, args, ""
	}
	if r.Method == http.MethodHead {
		if rt := methods[http.MethodGet]; rt != nil {
			return rt, args, ""
		}
	}
	var names []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
		if methods[m] != nil {
			names = append(names, m)
		}
	}
	return nil, nil, strings.Join(names, ", ")
}

// remoteHost drops the port of a remote address.
func remoteHost(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// truncate keeps client-chosen strings short in messages.
func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// ctx is the call's context.
func (c *Call) ctx() context.Context { return c.r.Context() }
