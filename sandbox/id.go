package sandbox

import "github.com/msb-dev/msb/namespace"

// ID names one sandbox: a name unique inside a namespace. Its parts are
// unexported so that ParseID is the only way to make one: an ID that
// exists is valid, and nothing below the front-ends validates names again.
type ID struct {
	ns, name string
}

// ParseID checks a namespace and a sandbox name and returns their ID.
// Errors wrap namespace.ErrInvalidName (class Invalid) and name the part
// that is wrong.
func ParseID(ns, name string) (ID, error) {
	if err := namespace.ValidateName("namespace", ns); err != nil {
		return ID{}, err
	}
	if err := namespace.ValidateName("sandbox", name); err != nil {
		return ID{}, err
	}
	return ID{ns: ns, name: name}, nil
}

// Namespace is the namespace the sandbox lives in.
func (id ID) Namespace() string { return id.ns }

// Name is the sandbox's name inside its namespace.
func (id ID) Name() string { return id.name }

// IsZero reports whether id is the zero ID, which names no sandbox.
func (id ID) IsZero() bool { return id.ns == "" }

// String renders the ID as "namespace/name", for messages and logs.
func (id ID) String() string { return id.ns + "/" + id.name }

// Key renders the ID as one token usable as a file or container name.
// Names cannot contain '.', so "namespace.name" is unambiguous.
func (id ID) Key() string { return id.ns + "." + id.name }

// ParseKey is the inverse of Key, for engines that find their sandboxes
// on disk. It fails like ParseID for anything Key could not have made.
func ParseKey(key string) (ID, error) {
	for i := 0; i < len(key); i++ {
		if key[i] == '.' {
			return ParseID(key[:i], key[i+1:])
		}
	}
	return ParseID(key, "")
}
