package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/auth/ratelimit"
	"github.com/msb-dev/msb/namespace"
)

// Method is one entry of the method table.
type Method struct {
	// Scope is the key scope the method needs, checked by dispatch for every
	// caller. A method without one needs a key with every scope.
	Scope auth.Scope
	// Changes marks methods that change something (start, stop, exec, key
	// changes): every call of one is audited, allowed or not.
	Changes bool
	// StartBucket makes calls also draw from the key's own, lower
	// sandbox.start rate-limit bucket.
	StartBucket bool
	// Namespaced methods take a "namespace" param, checked against the
	// caller's key before the handler runs.
	Namespaced bool
	// AllowAll lets the namespace be "*" (sandbox.metrics.get); a key for
	// one namespace then sees only that namespace.
	AllowAll bool
	// Handle runs the method. Its errors are classified by errorClasses.
	Handle func(ctx context.Context, call *Call) (any, error)
}

// Methods is the method table: every method the server answers, by name.
type Methods map[string]Method

// Call is an authorized call as a handler receives it.
type Call struct {
	// Namespace is the namespace the call acts on, already validated and
	// authorized; for "*" from a namespaced key it is narrowed to the key's.
	Namespace string
	Principal auth.Principal
	params    json.RawMessage

	// What the audit event of the call records, beyond the caller.
	auditNamespace, auditDetail string
}

// Audit sets the namespace and a detail (such as the id of a key acted on)
// for the call's audit event. Never pass secrets, code or output.
func (c *Call) Audit(namespace, detail string) {
	c.auditNamespace, c.auditDetail = namespace, detail
}

// Decode decodes the call's params into v strictly: unknown fields and wrong
// types are errors naming the field. Errors wrap errInvalidParams.
func (c *Call) Decode(v any) error {
	params := c.params
	if len(params) == 0 || bytes.Equal(params, nullID) {
		params = json.RawMessage("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(params))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %s", errInvalidParams, describeDecodeError(err))
	}
	return nil
}

func describeDecodeError(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		field := typeErr.Field
		if field == "" {
			return fmt.Sprintf("params must be a JSON object, not %s", typeErr.Value)
		}
		return fmt.Sprintf("%q must be %s, not %s", field, jsonType(typeErr.Type.Kind().String()), typeErr.Value)
	}
	if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return fmt.Sprintf("unknown field %s: check the spelling against the API reference", msg)
	}
	return "params are not valid: " + err.Error()
}

func jsonType(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "int", "int64", "int32", "uint", "uint64", "uint32":
		return "an integer"
	case "float64", "float32":
		return "a number"
	case "slice":
		return "an array"
	case "map", "struct":
		return "an object"
	case "bool":
		return "true or false"
	}
	return kind
}

// namespaceParam is the part of every namespaced method's params that the
// dispatcher reads before the handler.
type namespaceParam struct {
	Namespace *string `json:"namespace"`
}

// dispatch runs one call as the caller in ctx: rate limit, method table,
// scope, namespace, usage limit, then the handler; and it audits the call
// when it changes something or is refused. Every protocol comes through
// here (JSON-RPC, and others through Invoke), so none can skip a check.
func (s *Server) dispatch(ctx context.Context, name string, params json.RawMessage) (any, error) {
	v, _ := ctx.Value(principalKey{}).(principalValue)
	m, ok := s.methods[name]
	call := &Call{Principal: v.p, params: params}
	result, err := s.authorizeAndRun(ctx, v, name, m, ok, call)
	if s.audit != nil && !v.dev && (ok && m.Changes || err != nil && denied(err)) {
		s.record(v, name, call, err)
	}
	return result, err
}

func (s *Server) authorizeAndRun(ctx context.Context, v principalValue, name string, m Method, ok bool, call *Call) (any, error) {
	limited := s.limits != nil && !v.dev
	if limited {
		var st ratelimit.Status
		var err error
		rated := true
		switch {
		case v.st == nil || !v.st.usePrepaid():
			st, err = s.limits.Allow(v.p, ok && m.StartBucket)
		case ok && m.StartBucket:
			st, err = s.limits.AllowStart(v.p) // the main bucket was paid by Mount
		default:
			rated = false // paid by Mount
		}
		if v.st != nil && rated {
			v.st.setRate(st, err)
		}
		if err != nil {
			return nil, err
		}
	}
	if !ok {
		return nil, &methodNotFound{name}
	}
	params := call.params
	if len(params) > 0 && params[0] != '{' && !bytes.Equal(params, nullID) {
		return nil, fmt.Errorf("%w: params must be a JSON object of named fields", errInvalidParams)
	}
	scope := m.Scope
	if scope == "" {
		scope = auth.ScopeAll
	}
	if !v.p.Scopes.Has(scope) {
		return nil, auth.MissingScope(name, scope)
	}
	if m.Namespaced {
		var p namespaceParam
		if len(params) > 0 {
			if err := json.Unmarshal(params, &p); err != nil {
				return nil, fmt.Errorf("%w: %s", errInvalidParams, describeDecodeError(err))
			}
		}
		if p.Namespace == nil {
			return nil, fmt.Errorf("%w: \"namespace\" is required", errInvalidParams)
		}
		ns := *p.Namespace
		call.auditNamespace = ns
		if err := namespace.ValidateTarget(ns, m.AllowAll); err != nil {
			return nil, err
		}
		if m.AllowAll {
			ns = namespace.Visible(v.p.Namespace, ns)
		}
		if err := namespace.Authorize(v.p.Namespace, ns); err != nil {
			return nil, err
		}
		call.Namespace = ns
	}
	if limited {
		if err := s.limits.Use(ctx, v.p); err != nil {
			return nil, err
		}
	}
	return m.Handle(ctx, call)
}

// methodNotFound is the -32601 error for one method name.
type methodNotFound struct{ name string }

func (e *methodNotFound) Is(target error) bool { return target == errMethodNotFound }

func (e *methodNotFound) Error() string {
	return fmt.Sprintf("method %q not found", truncate(e.name))
}

type principalKey struct{}

// principalValue is what a request's context carries: the caller, and the
// request's own state (nil outside a request served by the Server).
type principalValue struct {
	p   auth.Principal
	dev bool
	st  *reqState
}

func withPrincipal(ctx context.Context, p auth.Principal, dev bool, st *reqState) context.Context {
	return context.WithValue(ctx, principalKey{}, principalValue{p, dev, st})
}

func principalFrom(ctx context.Context) (auth.Principal, bool) {
	v, ok := ctx.Value(principalKey{}).(principalValue)
	return v.p, ok
}
