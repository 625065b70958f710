package auth

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/msb-dev/msb/errdefs"
)

// Scope names one kind of access a key may be granted. Every JSON-RPC
// method needs exactly one scope (rpc.Method.Scope).
type Scope string

// The scopes of an API key.
const (
	ScopeSandboxCreate Scope = "sandbox:create" // sandbox.start
	ScopeSandboxRead   Scope = "sandbox:read"   // sandbox.metrics.get, logs
	ScopeSandboxExec   Scope = "sandbox:exec"   // sandbox.repl.run, sandbox.command.run, sandbox.fs.*
	ScopeSandboxDelete Scope = "sandbox:delete" // sandbox.stop
	ScopeKeysManage    Scope = "keys:manage"    // keys.*
	ScopeAuditRead     Scope = "audit:read"     // audit.list
	// ScopeAll stands for every scope: a key made without --scope has it.
	ScopeAll Scope = "*"
)

// scopeBits orders the scopes; a Scopes value is a bit set over it.
var scopeBits = []Scope{ScopeSandboxCreate, ScopeSandboxRead, ScopeSandboxExec, ScopeSandboxDelete, ScopeKeysManage, ScopeAuditRead}

// Scopes is a set of scopes. The zero value holds none (a caller with no
// scopes may call nothing), so forgetting to fill it in fails closed.
type Scopes uint16

// AllScopes holds every scope.
const AllScopes = Scopes(1<<6 - 1)

func bit(s Scope) Scopes {
	for i, b := range scopeBits {
		if b == s {
			return 1 << i
		}
	}
	return 0
}

// ScopeNames lists every scope name, for messages and help text.
func ScopeNames() []string {
	names := make([]string, len(scopeBits))
	for i, s := range scopeBits {
		names[i] = string(s)
	}
	return names
}

// ParseScopes reads scope names; an entry may also hold several separated by
// commas or spaces. No names, or "*" among them, means every scope. Errors
// wrap errdefs.ErrInvalid and name the unknown scope.
func ParseScopes(names []string) (Scopes, error) {
	var set Scopes
	seen := false
	for _, entry := range names {
		for _, name := range strings.FieldsFunc(entry, func(r rune) bool { return r == ',' || r == ' ' }) {
			seen = true
			if Scope(name) == ScopeAll {
				set = AllScopes
				continue
			}
			b := bit(Scope(name))
			if b == 0 {
				q := name
				if len(q) > 32 {
					q = q[:32] + "..."
				}
				return 0, fmt.Errorf("%w: unknown scope %s: use %s, or * for all", errdefs.ErrInvalid, strconv.Quote(q), strings.Join(ScopeNames(), ", "))
			}
			set |= b
		}
	}
	if !seen {
		return AllScopes, nil
	}
	return set, nil
}

// Has reports whether s grants scope; ScopeAll needs every scope.
func (s Scopes) Has(scope Scope) bool {
	if scope == ScopeAll {
		return s == AllScopes
	}
	b := bit(scope)
	return b != 0 && s&b == b
}

// Covers reports whether s holds every scope of o.
func (s Scopes) Covers(o Scopes) bool { return o&^s == 0 }

// List returns the scope names of s: ["*"] for all of them.
func (s Scopes) List() []string {
	if s == AllScopes {
		return []string{string(ScopeAll)}
	}
	out := []string{}
	for i, b := range scopeBits {
		if s&(1<<i) != 0 {
			out = append(out, string(b))
		}
	}
	return out
}

// String renders s as the registry stores it: "*" or names joined by commas.
func (s Scopes) String() string { return strings.Join(s.List(), ",") }
