// Package namespace owns sandbox and namespace names and the namespace claim
// carried by API keys: which names are valid, and which namespaces a key may
// act on.
package namespace

import (
	"strconv"

	"github.com/msb-dev/msb/errdefs"
)

// All is the claim of a key that may act on every namespace, and the
// namespace argument of sandbox.metrics.get that lists every namespace.
const All = "*"

// MaxLen is the longest valid name, in bytes (all valid names are ASCII).
const MaxLen = 63

var (
	// ErrInvalidName is wrapped by errors for malformed sandbox names,
	// namespace names, claims and method targets (class Invalid).
	ErrInvalidName = errdefs.New(errdefs.Invalid, "invalid name")

	// ErrForbidden is wrapped by errors for a namespace outside a key's
	// claim (class Forbidden).
	ErrForbidden = errdefs.New(errdefs.Forbidden, "namespace not allowed")
)

// quote quotes s for a message: %q escaping stops control characters from
// forging log lines, and the cut stops a huge parameter from flooding them.
func quote(s string) string {
	const keep = 64
	if len(s) > keep {
		return strconv.Quote(s[:keep]) + "..."
	}
	return strconv.Quote(s)
}

const nameRule = "use 1-63 letters, digits, '-' or '_', starting with a letter or digit"

// ValidateName checks that s is 1-63 ASCII letters, digits, '-' or '_',
// starting with a letter or digit. kind ("sandbox" or "namespace") names
// what s is in the message. It returns an error wrapping ErrInvalidName.
func ValidateName(kind, s string) error {
	if !validName(s) {
		return errdefs.Wrapf(ErrInvalidName, "invalid %s name %s: %s", kind, quote(s), nameRule)
	}
	return nil
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > MaxLen || !alnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '-' && c != '_' {
			return false
		}
	}
	return true
}

func alnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// ValidateClaim checks a key's namespace claim: All or a valid namespace
// name. It returns an error wrapping ErrInvalidName.
func ValidateClaim(claim string) error {
	if claim == All || validName(claim) {
		return nil
	}
	return errdefs.Wrapf(ErrInvalidName, "invalid namespace claim %s: use %q for all namespaces, or %s",
		quote(claim), All, nameRule)
}

// Covers reports whether a key with claim may act on namespace ns: the claim
// is All, or it is ns itself. Only claim All covers ns All.
func Covers(claim, ns string) bool {
	return claim == All || claim == ns
}

// Authorize returns nil when claim covers ns, and otherwise an error wrapping
// ErrForbidden that names both.
func Authorize(claim, ns string) error {
	switch {
	case Covers(claim, ns):
		return nil
	case ns == All:
		return errdefs.Wrapf(ErrForbidden, "API key for namespace %s cannot access all namespaces: it may only list its own namespace",
			quote(claim))
	default:
		return errdefs.Wrapf(ErrForbidden, "API key for namespace %s cannot access namespace %s", quote(claim), quote(ns))
	}
}

// ValidateTarget checks the namespace parameter of a method: a valid
// namespace name, or All when allowAll is set (only sandbox.metrics.get
// sets it). It returns an error wrapping ErrInvalidName.
func ValidateTarget(ns string, allowAll bool) error {
	if ns == All {
		if allowAll {
			return nil
		}
		return errdefs.Wrapf(ErrInvalidName, "namespace %q is only allowed in sandbox.metrics.get", All)
	}
	return ValidateName("namespace", ns)
}

// Visible narrows the namespace a listing covers to what claim may see: for
// ns All it returns All when claim is All, and otherwise the claim itself, so
// a namespaced key listing "*" sees only its own namespace. Any other ns is
// returned unchanged (Authorize still decides whether it is allowed).
func Visible(claim, ns string) string {
	if ns == All && claim != All {
		return claim
	}
	return ns
}
