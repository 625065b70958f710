package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/namespace"
	"github.com/msb-dev/msb/sandbox"
)

// Target says what a method's params name, which dispatch checks before
// the handler runs.
type Target int

// Targets of a method.
const (
	// TargetNone: the params name no namespace (keys.*, audit.list).
	TargetNone Target = iota
	// TargetSandbox: "namespace" and "sandbox" are required; the handler
	// gets Call.ID.
	TargetSandbox
	// TargetNamespaceOrAll: "namespace" is required and may be "*"
	// (narrowed to the key's own); "sandbox" is optional and, when given,
	// needs a real namespace and is Call.ID (sandbox.metrics.get).
	TargetNamespaceOrAll
)

// Ref is the part of a sandbox method's params that names its target. A
// params struct embeds it to have dispatch validate and authorize it.
type Ref struct {
	Namespace *string `json:"namespace"`
	Sandbox   *string `json:"sandbox"`
}

func (r *Ref) ref() *Ref { return r }

type refParams interface{ ref() *Ref }

// Method is one JSON-RPC method whose params decode into P: once,
// strictly (an unknown field or a wrong type is an error naming it), before
// anything else looks at them.
type Method[P any] struct {
	// Scope is the key scope the method needs; "" needs every scope.
	Scope auth.Scope
	// Changes marks methods that change something (start, stop, exec, key
	// changes): every call of one is audited, allowed or not.
	Changes bool
	// Start makes calls also draw from the key's own, lower sandbox.start
	// rate-limit bucket.
	Start bool
	// Target says what the params name; P must embed Ref unless it is
	// TargetNone.
	Target Target
	// Handle runs the method on decoded, authorized params.
	Handle func(ctx context.Context, c *Call, p P) (any, error)
}

// Handler is what the method table holds: a Method of any params type.
type Handler interface {
	describe() methodSpec
	paramsType() reflect.Type
	decode(params json.RawMessage) (any, *Ref, error)
	run(ctx context.Context, c *Call, params any) (any, error)
}

type methodSpec struct {
	scope          auth.Scope
	changes, start bool
	target         Target
}

func (m Method[P]) describe() methodSpec {
	return methodSpec{scope: m.Scope, changes: m.Changes, start: m.Start, target: m.Target}
}

func (m Method[P]) decode(params json.RawMessage) (any, *Ref, error) {
	p := new(P)
	if err := decodeStrict(params, p); err != nil {
		return nil, nil, err
	}
	var ref *Ref
	if r, ok := any(p).(refParams); ok {
		ref = r.ref()
	}
	if m.Target != TargetNone && ref == nil {
		return nil, nil, fmt.Errorf("params %T of a method with a target do not embed rpc.Ref", p) // NewServer refuses such a table
	}
	return p, ref, nil
}

func (m Method[P]) run(ctx context.Context, c *Call, params any) (any, error) {
	return m.Handle(ctx, c, *params.(*P))
}

// Methods is the method table: every method the server answers, by name.
type Methods map[string]Handler

// Scope returns the scope method name needs, and whether it exists.
func (ms Methods) Scope(name string) (auth.Scope, bool) {
	m, ok := ms[name]
	if !ok {
		return "", false
	}
	return m.describe().scope, true
}

// Call is an authorized call as a handler receives it.
type Call struct {
	Caller *auth.Caller
	// Namespace is the namespace the call acts on, validated and
	// authorized; a "*" from a namespaced key is narrowed to its own.
	Namespace string
	// ID is the sandbox the call acts on (TargetSandbox, and
	// TargetNamespaceOrAll when the params name one).
	ID     sandbox.ID
	action *auth.Action
}

// Principal is who makes the call.
func (c *Call) Principal() auth.Principal { return c.Caller.Principal }

// Audit sets the namespace and a detail (such as the id of a key acted on)
// for the call's audit event. Never pass secrets, code or output.
func (c *Call) Audit(namespace, detail string) {
	c.action.Namespace, c.action.Detail = namespace, detail
}

// decodeStrict decodes params into v strictly: unknown fields and wrong
// types are errors naming the field, of class Invalid.
func decodeStrict(params json.RawMessage, v any) error {
	if len(params) == 0 || bytes.Equal(params, nullID) {
		params = json.RawMessage("{}")
	}
	if params[0] != '{' {
		return fmt.Errorf("%w: params must be a JSON object of named fields", errInvalidParams)
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
		return fmt.Sprintf("%q must be %s, not %s", field, jsonType(typeErr.Type), typeErr.Value)
	}
	if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return fmt.Sprintf("unknown field %s: check the spelling against the API reference", msg)
	}
	return "params are not valid: " + err.Error()
}

func jsonType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint64, reflect.Uint32:
		return "an integer"
	case reflect.Float64, reflect.Float32:
		return "a number"
	case reflect.Slice:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Bool:
		return "true or false"
	}
	return t.Kind().String()
}

// dispatch runs one call as caller: the method's params are decoded once,
// then the Gate charges the rate, checks the scope, the namespace and the
// usage limit, then the handler runs; the Gate audits the outcome. Every
// protocol comes through here (JSON-RPC, and others through Invoke), so
// none can skip a check.
//
// A caller learns what is wrong with its params only once it may make the
// call at all: a key without the scope, or for another namespace, is
// refused as such (and audited so, with the target the params name) even
// when its params are also malformed.
func (s *Server) dispatch(ctx context.Context, caller *auth.Caller, name string, params json.RawMessage) (result any, err error) {
	a := &auth.Action{Name: name}
	defer func() {
		if p := recover(); p != nil {
			s.gate.Done(caller, *a, errdefs.New(errdefs.Internal, "the method panicked"))
			panic(p)
		}
		s.gate.Done(caller, *a, err)
	}()
	m, ok := s.methods[name]
	var decoded any
	var ref *Ref
	var decodeErr error
	var spec methodSpec
	if ok {
		spec = m.describe()
		a.Scope, a.Changes, a.Start = spec.scope, spec.changes, spec.start
		decoded, ref, decodeErr = m.decode(params)
		if spec.target != TargetNone {
			// The target is read leniently too, for the namespace check
			// and the audit record of a call whose params are malformed.
			ns, sb, named := target(params)
			a.Namespace, a.Sandbox = ns, sb
			a.Namespaced, a.AllowAll = named, spec.target == TargetNamespaceOrAll
		}
	}
	if caller == nil {
		return nil, errdefs.Forbiddenf("%s: the request was not authenticated", truncate(name))
	}
	if err := s.gate.Charge(caller, a); err != nil {
		return nil, err
	}
	if !ok {
		return nil, &methodNotFound{name}
	}
	check := func() error {
		if decodeErr != nil {
			return decodeErr
		}
		if spec.target != TargetNone {
			return checkRef(spec.target, ref)
		}
		return nil
	}
	if err := s.gate.Authorize(ctx, caller, a, check); err != nil {
		return nil, err
	}
	call := &Call{Caller: caller, action: a}
	if spec.target != TargetNone {
		call.Namespace = a.Namespace
		if ref.Sandbox != nil {
			if call.ID, err = sandbox.ParseID(a.Namespace, *ref.Sandbox); err != nil {
				return nil, err
			}
		}
	}
	return m.run(ctx, call, decoded)
}

// target reads the namespace and sandbox params leniently, whatever else
// the params hold; named reports whether a namespace string was there.
func target(params json.RawMessage) (ns, sb string, named bool) {
	var t struct {
		Namespace, Sandbox json.RawMessage
	}
	if json.Unmarshal(params, &t) != nil {
		return "", "", false
	}
	named = json.Unmarshal(t.Namespace, &ns) == nil && len(t.Namespace) > 0 && t.Namespace[0] == '"'
	if len(t.Sandbox) > 0 && t.Sandbox[0] == '"' {
		json.Unmarshal(t.Sandbox, &sb)
	}
	return ns, sb, named
}

// checkRef checks the names a call's params give before the Gate
// authorizes the namespace: required ones are there, the sandbox name is
// valid, and a sandbox is never asked for in namespace "*".
func checkRef(t Target, ref *Ref) error {
	if ref.Namespace == nil {
		return fmt.Errorf("%w: \"namespace\" is required", errInvalidParams)
	}
	if t == TargetSandbox && ref.Sandbox == nil {
		return fmt.Errorf("%w: \"sandbox\" is required", errInvalidParams)
	}
	if ref.Sandbox == nil {
		return nil
	}
	if err := namespace.ValidateName("sandbox", *ref.Sandbox); err != nil {
		return err
	}
	if t == TargetNamespaceOrAll && *ref.Namespace == namespace.All {
		return errdefs.Invalidf("give a namespace with a sandbox name, not %q", namespace.All)
	}
	return nil
}

// methodNotFound is the -32601 error for one method name.
type methodNotFound struct{ name string }

func (e *methodNotFound) Is(target error) bool { return target == errMethodNotFound }

func (e *methodNotFound) Error() string {
	return fmt.Sprintf("method %q not found", truncate(e.name))
}

// MethodInfo describes one method of a table, for documentation and for
// tests that walk every method.
type MethodInfo struct {
	Name   string
	Scope  auth.Scope
	Params reflect.Type // the struct its params decode into
}

// Describe lists the methods of ms, by name.
func (ms Methods) Describe() []MethodInfo {
	out := make([]MethodInfo, 0, len(ms))
	for name, m := range ms {
		out = append(out, MethodInfo{Name: name, Scope: m.describe().scope, Params: m.paramsType()})
	}
	slices.SortFunc(out, func(a, b MethodInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (m Method[P]) paramsType() reflect.Type { return reflect.TypeFor[P]() }

// check reports a method whose params cannot carry its target.
func (ms Methods) check() error {
	for name, m := range ms {
		if m.describe().target != TargetNone && !reflect.PointerTo(m.paramsType()).Implements(reflect.TypeFor[refParams]()) {
			return fmt.Errorf("rpc: method %s has a target, but its params %v do not embed rpc.Ref", name, m.paramsType())
		}
	}
	return nil
}

// Methods returns the server's method table.
func (s *Server) Methods() Methods { return s.methods }
