package network

import (
	"net/netip"
	"sync"
	"time"
)

// names remembers which addresses each name resolved to for one sandbox,
// and the reverse, so that a connection to an address can be matched
// against domain rules. Entries live for a retention period after the
// last time the name was resolved or used, and the table is bounded: the
// oldest entries go first.
type names struct {
	mu        sync.Mutex
	retention time.Duration
	max       int
	byName    map[string]*nameEntry
	byAddr    map[netip.Addr]map[string]struct{}
	now       func() time.Time
}

type nameEntry struct {
	addrs   map[netip.Addr]struct{}
	expires time.Time
}

func newNames(retention time.Duration, max int) *names {
	return &names{
		retention: retention,
		max:       max,
		byName:    make(map[string]*nameEntry),
		byAddr:    make(map[netip.Addr]map[string]struct{}),
		now:       time.Now,
	}
}

// add records that name resolved to addrs.
func (n *names) add(name string, addrs []netip.Addr) {
	if len(addrs) == 0 {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.now()
	e := n.byName[name]
	if e == nil {
		if len(n.byName) >= n.max {
			n.evictLocked(now)
		}
		e = &nameEntry{addrs: make(map[netip.Addr]struct{})}
		n.byName[name] = e
	}
	e.expires = now.Add(n.retention)
	for _, a := range addrs {
		e.addrs[a] = struct{}{}
		s := n.byAddr[a]
		if s == nil {
			s = make(map[string]struct{})
			n.byAddr[a] = s
		}
		s[name] = struct{}{}
	}
}

// lookup returns the live names that resolved to addr, and extends their
// lives: a name in use stays remembered.
func (n *names) lookup(addr netip.Addr) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.now()
	var out []string
	for name := range n.byAddr[addr] {
		e := n.byName[name]
		if e == nil || now.After(e.expires) {
			continue
		}
		e.expires = now.Add(n.retention)
		out = append(out, name)
	}
	return out
}

// has reports whether name resolved to addr, live.
func (n *names) has(name string, addr netip.Addr) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	e := n.byName[name]
	if e == nil || n.now().After(e.expires) {
		return false
	}
	_, ok := e.addrs[addr]
	return ok
}

// evictLocked drops expired entries, and if none expired, the one closest
// to expiring.
func (n *names) evictLocked(now time.Time) {
	var oldest string
	var oldestT time.Time
	removed := false
	for name, e := range n.byName {
		if now.After(e.expires) {
			n.removeLocked(name, e)
			removed = true
			continue
		}
		if oldest == "" || e.expires.Before(oldestT) {
			oldest, oldestT = name, e.expires
		}
	}
	if !removed && oldest != "" {
		n.removeLocked(oldest, n.byName[oldest])
	}
}

func (n *names) removeLocked(name string, e *nameEntry) {
	delete(n.byName, name)
	for a := range e.addrs {
		if s := n.byAddr[a]; s != nil {
			delete(s, name)
			if len(s) == 0 {
				delete(n.byAddr, a)
			}
		}
	}
}
