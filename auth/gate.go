package auth

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/msb-dev/msb/auth/audit"
	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/namespace"
)

// Policy is how a server treats callers: with API keys (KeyPolicy) or
// without (DevPolicy, development mode). It is chosen once, when the
// server is built; nothing else asks whether keys are in use.
type Policy interface {
	// Authenticate returns who key belongs to; errors are of class
	// Unauthenticated and name the cause.
	Authenticate(ctx context.Context, key string) (Principal, error)
	// Recheck tells whether a principal Authenticate returned earlier
	// still holds: not expired, revoked, spent or invalidated since. A
	// long-lived connection (an agent socket, a log stream) asks it, as
	// every request of the others authenticates again.
	Recheck(ctx context.Context, p Principal) error
	// Identify names the issued key a refused request carried, for the
	// audit log ("" for anything never issued).
	Identify(ctx context.Context, key string) (id, label string)
	// Allow takes one call from p's rate (and its sandbox.start rate when
	// start is set); AllowStart only from the latter; Status peeks.
	Allow(p Principal, start bool) (ratelimit.Status, error)
	AllowStart(p Principal) (ratelimit.Status, error)
	Status(p Principal) ratelimit.Status
	// Use counts one use of p's key: ErrUsageLimit once they are spent.
	Use(ctx context.Context, p Principal) error
	// Record queues an audit event and returns a channel closed once it
	// is written.
	Record(e audit.Event) <-chan struct{}
	// Dev reports development mode: no keys, so no key management, and a
	// server that must guard itself against web pages.
	Dev() bool
}

// KeyPolicy is the policy of a server with API keys: keys checked by
// authn, limits enforced by limits, events written by auditor.
type KeyPolicy struct {
	Authn   *Authenticator
	Limits  *Limits
	Auditor Auditor
}

// Auditor records audit events; *audit.Writer is the real one.
type Auditor interface {
	// Record queues e and returns a channel closed once it is written.
	Record(e audit.Event) <-chan struct{}
}

// Authenticate implements Policy.
func (k *KeyPolicy) Authenticate(ctx context.Context, key string) (Principal, error) {
	return k.Authn.Authenticate(ctx, key)
}

// Recheck implements Policy.
func (k *KeyPolicy) Recheck(ctx context.Context, p Principal) error { return k.Authn.Recheck(ctx, p) }

// Identify implements Policy.
func (k *KeyPolicy) Identify(ctx context.Context, key string) (string, string) {
	return k.Authn.Identify(ctx, key)
}

// Allow implements Policy.
func (k *KeyPolicy) Allow(p Principal, start bool) (ratelimit.Status, error) {
	return k.Limits.Allow(p, start)
}

// AllowStart implements Policy.
func (k *KeyPolicy) AllowStart(p Principal) (ratelimit.Status, error) { return k.Limits.AllowStart(p) }

// Status implements Policy.
func (k *KeyPolicy) Status(p Principal) ratelimit.Status { return k.Limits.Status(p) }

// Use implements Policy.
func (k *KeyPolicy) Use(ctx context.Context, p Principal) error { return k.Limits.Use(ctx, p) }

// Record implements Policy.
func (k *KeyPolicy) Record(e audit.Event) <-chan struct{} {
	if k.Auditor == nil {
		return closed
	}
	return k.Auditor.Record(e)
}

// closed is a channel that is closed.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Dev implements Policy: false.
func (k *KeyPolicy) Dev() bool { return false }

// DevPolicy is development mode: every caller is FullAccess("dev"), with no
// limits and no audit log.
type DevPolicy struct{}

// Authenticate implements Policy: everyone is the developer.
func (DevPolicy) Authenticate(context.Context, string) (Principal, error) {
	return FullAccess("dev"), nil
}

// Recheck implements Policy: the developer always holds.
func (DevPolicy) Recheck(context.Context, Principal) error { return nil }

// Identify implements Policy.
func (DevPolicy) Identify(context.Context, string) (string, string) { return "", "" }

// Allow implements Policy: no limit.
func (DevPolicy) Allow(Principal, bool) (ratelimit.Status, error) { return ratelimit.Status{}, nil }

// AllowStart implements Policy: no limit.
func (DevPolicy) AllowStart(Principal) (ratelimit.Status, error) { return ratelimit.Status{}, nil }

// Status implements Policy.
func (DevPolicy) Status(Principal) ratelimit.Status { return ratelimit.Status{} }

// Use implements Policy: no usage limit.
func (DevPolicy) Use(context.Context, Principal) error { return nil }

// Record implements Policy: no audit log.
func (DevPolicy) Record(audit.Event) <-chan struct{} { return closed }

// Dev implements Policy: true.
func (DevPolicy) Dev() bool { return true }

// Caller is one authenticated request's caller, as every front-end passes
// it to the Gate: who it is, where from, and what its requests
// told its rate (for the X-RateLimit-* headers of the response).
type Caller struct {
	Principal Principal
	Remote    string // the remote address, without port

	mu         sync.Mutex // calls of one request may run concurrently
	rate       ratelimit.Status
	rated      bool
	retryAfter time.Duration
	prepaid    int // calls already taken from the rate (Gate.Prepay)
}

// Rate reports the caller's rate after its last call (or a peek when no
// call was charged) and, after a refusal, how long to wait.
func (c *Caller) Rate(p Policy) (ratelimit.Status, time.Duration) {
	c.mu.Lock()
	rs, rated, retry := c.rate, c.rated, c.retryAfter
	c.mu.Unlock()
	if !rated {
		rs = p.Status(c.Principal)
	}
	return rs, retry
}

func (c *Caller) setRate(rs ratelimit.Status, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rate, c.rated = rs, true
	if rl, ok := err.(*RateLimitError); ok && rl.RetryAfter > c.retryAfter {
		c.retryAfter = rl.RetryAfter
	}
}

// usePrepaid takes one prepaid call, if any is left.
func (c *Caller) usePrepaid() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.prepaid == 0 {
		return false
	}
	c.prepaid--
	return true
}

// Action is one thing a caller asks to do, as a front-end describes it to
// the Gate: its name (a JSON-RPC method, an MCP tool, a REST route), the
// scope it needs, and what it acts on.
type Action struct {
	Name  string
	Scope Scope // "": every scope (ScopeAll)
	// Changes marks actions that change something: every one is audited,
	// allowed or not. Reads are audited only when refused.
	Changes bool
	// Start draws also from the key's lower sandbox.start bucket.
	Start bool
	// Namespaced actions act on Namespace, which the Gate validates and
	// authorizes; AllowAll lets it be "*" (narrowed to the key's own).
	Namespaced bool
	AllowAll   bool
	Namespace  string
	Sandbox    string // for the audit record
	// Detail is the audit record's detail (such as the id of a key acted
	// on), set by the handler. Never secrets, code or output.
	Detail string

	held bool // it holds one of its key's calls in flight (Charge)
}

// Gate is the one path every call of every front-end takes: rate limit,
// scope, namespace, usage limit; then the front-end runs the call and
// reports its outcome, which the Gate audits. No front-end can skip a
// step, because the only way to a handler is through Charge and Authorize.
type Gate struct {
	Policy Policy
	// Code is the code an audit record keeps of an error: the JSON-RPC
	// code of its class, whichever front-end refused or failed the call.
	Code func(error) int64
	// Log gets one line per refused authentication, sampled like their
	// audit events; nil: slog.Default().
	Log *slog.Logger
	// MaxInFlight bounds the calls of one key under way at once (0: no
	// bound), so that one key cannot hold every worker, connection and
	// buffer of the server.
	MaxInFlight int
	inFlight    sync.Map // key id -> *atomic.Int64

	// Refusals that cost the caller nothing (401s, 429s) are audited at
	// most at refusalRate per source; the rest are counted into the next
	// event recorded, so a flood can neither fill the database nor crowd
	// out the events of real changes.
	refusals *ratelimit.Limiter
	skipped  sync.Map // source -> *atomic.Int64
}

// NewGate returns the gate of policy p; code gives the audit code of an
// error (see Gate.Code); now is the clock of its refusal sampling (nil:
// time.Now).
func NewGate(p Policy, code func(error) int64, now func() time.Time) *Gate {
	return &Gate{Policy: p, Code: code, refusals: ratelimit.New(now)}
}

// refusalRate bounds the audit events of 401s (all together) and of 429s
// (per key).
var refusalRate = ratelimit.Rate{N: 60, Per: time.Minute}

// Sample reports whether a refusal from source goes into the audit log
// (and the log) and, if so, how many were left out before it.
func (g *Gate) Sample(source string) (record bool, skipped int64) {
	c, _ := g.skipped.LoadOrStore(source, new(atomic.Int64))
	n := c.(*atomic.Int64)
	if !g.refusals.Take(source, refusalRate).Allowed {
		n.Add(1)
		return false, 0
	}
	return true, n.Swap(0)
}

// WithSkipped notes in an audit detail how many like events were left out.
func WithSkipped(detail string, skipped int64) string {
	if skipped == 0 {
		return detail
	}
	return fmt.Sprintf("%s (and %d more like it, not recorded one by one)", detail, skipped)
}

// Authenticate returns the caller a request's key makes. A refusal is
// audited (sampled); what, if not nil, is asked then what the request
// asked for (a method name, or "").
func (g *Gate) Authenticate(ctx context.Context, key, remote string, what func() string) (*Caller, error) {
	p, err := g.Policy.Authenticate(ctx, key)
	if err == nil {
		return &Caller{Principal: p, Remote: remote}, nil
	}
	method := ""
	if what != nil {
		method = what()
	}
	if ok, skipped := g.Sample("unauthenticated"); ok {
		log := g.Log
		if log == nil {
			log = slog.Default()
		}
		log.Info("request denied", "remote", remote, "method", truncate(method), "reason", refusalDetail(err), "not_logged_before", skipped)
		e := audit.Event{Method: truncate(method), Outcome: Outcome(err), Code: g.Code(err), Detail: WithSkipped(refusalDetail(err), skipped), Remote: remote}
		if errdefs.Is(err, errdefs.Unauthenticated) {
			e.KeyID, e.KeyLabel = g.Policy.Identify(ctx, key)
		}
		g.record(e)
	}
	return nil, err
}

// Recheck tells whether c's key still holds (Policy.Recheck); a
// long-lived connection asks it before each call and now and then in
// between, and ends when it does not.
func (g *Gate) Recheck(ctx context.Context, c *Caller) error {
	return g.Policy.Recheck(ctx, c.Principal)
}

// auditWait bounds how long a call waits for its audit event to be
// written before it is answered: a database stuck for longer must not
// stop every call (the event is still written when it can be).
const auditWait = 5 * time.Second

// record writes e to the audit log and waits until it is written, so that
// the call it records is answered only after a read of the log can see it.
func (g *Gate) record(e audit.Event) {
	select {
	case <-g.Policy.Record(e):
	case <-time.After(auditWait):
	}
}

// refusalDetail is what an audit record keeps of a refusal: msb's own
// message for a class it wrote for the client; nothing for the others.
func refusalDetail(err error) string {
	switch errdefs.Classify(err) {
	case errdefs.Unauthenticated, errdefs.Forbidden, errdefs.RateLimited:
		return err.Error()
	}
	return ""
}

// Prepay takes n calls from the caller's rate at once, for a protocol
// whose one request carries n messages (MCP): the calls the front-end
// then admits are not charged again. The error is the first refusal.
func (g *Gate) Prepay(c *Caller, n int) error {
	for range n {
		rs, err := g.Policy.Allow(c.Principal, false)
		c.setRate(rs, err)
		if err != nil {
			return err
		}
	}
	c.mu.Lock()
	c.prepaid += n
	c.mu.Unlock()
	return nil
}

// Charge takes one call of a from c's rate (unless it was prepaid, and
// from the sandbox.start bucket for a start). Every call is charged,
// whatever then becomes of it. A refusal is of class RateLimited.
func (g *Gate) Charge(c *Caller, a *Action) error {
	if g.MaxInFlight > 0 && !c.Principal.Unlimited {
		v, _ := g.inFlight.LoadOrStore(c.Principal.KeyID, new(atomic.Int64))
		n := v.(*atomic.Int64)
		if n.Add(1) > int64(g.MaxInFlight) {
			n.Add(-1)
			err := &RateLimitError{RetryAfter: time.Second, InFlight: g.MaxInFlight}
			c.mu.Lock()
			c.retryAfter = max(c.retryAfter, err.RetryAfter)
			c.mu.Unlock()
			return err
		}
		a.held = true
	}
	var rs ratelimit.Status
	var err error
	switch {
	case !c.usePrepaid():
		rs, err = g.Policy.Allow(c.Principal, a.Start)
	case a.Start:
		rs, err = g.Policy.AllowStart(c.Principal) // the main bucket was prepaid
	default:
		return nil
	}
	c.setRate(rs, err)
	return err
}

// Authorize decides whether c may do a: its scope, then its namespace
// (a.Namespace is narrowed when "*"), then the front-end's own check of
// the request (validate, if not nil: a caller that may not make the call
// learns nothing of what is wrong with its request), then its key's usage
// limit, which it counts. A refusal is of class Forbidden, Invalid (a
// malformed namespace) or Unauthenticated (uses spent), or validate's.
func (g *Gate) Authorize(ctx context.Context, c *Caller, a *Action, validate func() error) error {
	scope := a.Scope
	if scope == "" {
		scope = ScopeAll
	}
	if !c.Principal.Scopes.Has(scope) {
		return MissingScope(a.Name, scope)
	}
	if err := g.authorizeNamespace(c, a); err != nil {
		return err
	}
	if validate != nil {
		if err := validate(); err != nil {
			return err
		}
	}
	return g.Policy.Use(ctx, c.Principal)
}

// authorizeNamespace checks the namespace of a namespaced action.
func (g *Gate) authorizeNamespace(c *Caller, a *Action) error {
	if a.Namespaced {
		if err := namespace.ValidateTarget(a.Namespace, a.AllowAll); err != nil {
			return err
		}
		if a.AllowAll {
			a.Namespace = namespace.Visible(c.Principal.Namespace, a.Namespace)
		}
		if err := namespace.Authorize(c.Principal.Namespace, a.Namespace); err != nil {
			return err
		}
	}
	return nil
}

// Done reports how an action ended (err nil: it succeeded, or it was
// refused or failed): actions that change something, and refusals, are
// audited.
func (g *Gate) Done(c *Caller, a Action, err error) {
	if a.held {
		if v, ok := g.inFlight.Load(c.Principal.KeyID); ok {
			v.(*atomic.Int64).Add(-1)
		}
	}
	refused := Refused(err)
	if !a.Changes && !refused {
		return
	}
	e := audit.Event{Method: truncate(a.Name), Sandbox: truncate(a.Sandbox), Outcome: audit.OK, Detail: a.Detail}
	// A call refused before its namespace was checked still names it,
	// unless what it gave is not a namespace at all.
	if namespace.ValidateTarget(a.Namespace, true) == nil {
		e.Namespace = a.Namespace
	}
	if c != nil {
		e.KeyID, e.KeyLabel, e.KeyNamespace, e.Remote = c.Principal.KeyID, c.Principal.Label, c.Principal.Namespace, c.Remote
	}
	if err != nil {
		// A refusal keeps its message (written by msb, never holding a
		// key); a failure only its code, since its message could echo
		// the request.
		e.Code, e.Outcome, e.Detail = g.Code(err), Outcome(err), refusalDetail(err)
		if e.Outcome == audit.RateLimited {
			ok, skipped := g.Sample("rate_limited\x00" + e.KeyID)
			if !ok {
				return
			}
			e.Detail = WithSkipped(e.Detail, skipped)
		}
	}
	g.record(e)
}

// Refused reports whether err refused a call (401, 403, 429) rather than
// failed it.
func Refused(err error) bool {
	switch errdefs.Classify(err) {
	case errdefs.Unauthenticated, errdefs.Forbidden, errdefs.RateLimited:
		return err != nil
	}
	return false
}

// Outcome is the audit outcome of err.
func Outcome(err error) string {
	if err == nil {
		return audit.OK
	}
	switch errdefs.Classify(err) {
	case errdefs.Unauthenticated:
		return audit.Unauthenticated
	case errdefs.Forbidden:
		return audit.Forbidden
	case errdefs.RateLimited:
		return audit.RateLimited
	}
	return audit.Error
}

// truncate keeps client-chosen strings short and printable in audit
// records: one that is not quite plain text is kept quoted, so that no
// byte of it can forge a line or drive a terminal that prints the log.
func truncate(s string) string {
	if len(s) > 64 {
		s = strings.ToValidUTF8(s[:64], "") + "..."
	}
	for _, r := range s {
		if !unicode.IsGraphic(r) || r == '"' || r == '\\' {
			return strconv.QuoteToGraphic(s)
		}
	}
	return s
}
