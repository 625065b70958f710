package network

import (
	"net/netip"
	"sync"
	"time"
)

// names remembers which addresses each name resolved to for one sandbox,
// and the reverse, so that a connection to an address can be matched
// against domain rules. Entries live for a retention period after the
// last time the name was resolved or used, and the table is bounded in
// names (max), addresses per name (maxAddrsPerName: a DNS server of the
// sandbox's own can answer every query with new addresses) and addresses
// in all (max * maxAddrsPerName / 8): the oldest go first.
type names struct {
	mu        sync.Mutex
	retention time.Duration
	max       int
	byName    map[string]*nameEntry
	byAddr    map[netip.Addr]map[string]struct{}
	addrs     int // addresses of all names
	now       func() time.Time
}

// maxAddrsPerName bounds the addresses one name keeps: the most recently
// answered. Real names answer with a handful; CDNs rotate through tens.
const maxAddrsPerName = 64

type nameEntry struct {
	addrs   map[netip.Addr]time.Time // when each was last answered
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
			n.evictLocked(now, "")
		}
		e = &nameEntry{addrs: make(map[netip.Addr]time.Time)}
		n.byName[name] = e
	}
	e.expires = now.Add(n.retention)
	for _, a := range addrs {
		if _, ok := e.addrs[a]; !ok {
			n.addrs++
		}
		e.addrs[a] = now
		s := n.byAddr[a]
		if s == nil {
			s = make(map[string]struct{})
			n.byAddr[a] = s
		}
		s[name] = struct{}{}
	}
	for len(e.addrs) > maxAddrsPerName {
		n.dropOldestAddrLocked(name, e)
	}
	for n.addrs > n.maxAddrs() && len(n.byName) > 1 {
		n.evictLocked(now, name)
	}
}

// maxAddrs bounds the addresses of all names together.
func (n *names) maxAddrs() int { return max(n.max*maxAddrsPerName/8, maxAddrsPerName) }

// dropOldestAddrLocked forgets the address of e (name's) answered longest
// ago.
func (n *names) dropOldestAddrLocked(name string, e *nameEntry) {
	var oldest netip.Addr
	var at time.Time
	for a, t := range e.addrs {
		if !oldest.IsValid() || t.Before(at) {
			oldest, at = a, t
		}
	}
	n.forgetLocked(name, e, oldest)
}

// forgetLocked forgets that name (whose entry is e) resolved to a.
func (n *names) forgetLocked(name string, e *nameEntry, a netip.Addr) {
	delete(e.addrs, a)
	n.addrs--
	if s := n.byAddr[a]; s != nil {
		delete(s, name)
		if len(s) == 0 {
			delete(n.byAddr, a)
		}
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
// to expiring but keep.
func (n *names) evictLocked(now time.Time, keep string) {
	var oldest string
	var oldestT time.Time
	removed := false
	for name, e := range n.byName {
		if name == keep {
			continue
		}
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
		n.forgetLocked(name, e, a)
	}
}
