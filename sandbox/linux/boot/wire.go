package boot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/msb-dev/msb/sandbox/guest"
)

// The engine sends an init its Stage and its Config in an encoding of
// their own (MarshalBinary), which the init decodes without reflection:
// encoding/json builds its decoder of a type on first use, and no init
// has one built. That cost every init about 1.5 ms of CPU (5 to 6 % of
// its CPU) on the machine of the README's benchmarks. The encoding has
// no field names: each field in the order the type declares it, as
//
//   - a string or []byte: its length (uvarint), then its bytes;
//   - an unsigned integer: a uvarint; a signed one: a varint;
//   - a bool: one byte, 0 or 1;
//   - a slice: its length (uvarint), then its elements (an empty one
//     decodes as nil, which no reader of these types tells from empty);
//   - a pointer: a bool (set or nil), then what it points to;
//
// after wireLayout (a uvarint). The decoder checks every length against
// the bytes left, so a damaged message fails with an error, having
// allocated in proportion to its size.

// wireLayout is a CRC-32 of the fields of Stage and Config and of the
// types they hold, in order, names and types (TestWireLayout computes it
// and checks the encoding's order against the types'). Every message
// starts with it, so that an init whose types differ from its server's
// (a portal binary built from other source than msb: portalbin checks
// the revision, but not uncommitted edits) refuses a message rather than
// read one field as another.
const wireLayout = 0x615373cc

// MarshalBinary encodes st for the init's readStage. It never fails.
func (st *Stage) MarshalBinary() ([]byte, error) {
	e := newEncoder()
	e.bool(st.Userns)
	e.string(st.Dir)
	encodeSlice(e, st.Cgroups, func(e *encoder, m CgroupMount) {
		e.string(m.Dir)
		e.string(m.Opts)
	})
	e.bool(st.CgroupV2)
	return e.b, nil
}

// UnmarshalBinary decodes what MarshalBinary encoded into st; an error
// wrapping errDamaged if data is not such a message.
func (st *Stage) UnmarshalBinary(data []byte) error {
	d := newDecoder(data)
	st.Userns = d.bool()
	st.Dir = d.string()
	st.Cgroups = decodeSlice(d, func(d *decoder) CgroupMount {
		return CgroupMount{Dir: d.string(), Opts: d.string()}
	})
	st.CgroupV2 = d.bool()
	return d.end()
}

// MarshalBinary encodes c for the init's readConfig: all of it but its
// Stage (sent before, on its own) and the descriptors (sent alongside).
// It never fails.
func (c *Config) MarshalBinary() ([]byte, error) {
	e := newEncoder()
	e.string(c.Root)
	e.strings(c.Layers)
	e.string(c.Upper)
	e.string(c.Work)
	e.string(c.Disk)
	e.bool(c.Build != nil)
	if b := c.Build; b != nil {
		e.strings(b.Dirs)
		encodeSlice(e, b.Links, func(e *encoder, l guest.Link) {
			e.string(l.Path)
			e.string(l.Target)
		})
		encodeSlice(e, b.Files, func(e *encoder, f guest.File) {
			e.string(f.Path)
			e.uint(uint64(f.Mode))
			e.bytes(f.Content)
		})
		e.bool(b.Layered)
		e.strings(b.Mounts)
	}
	encodeSlice(e, c.Binds, func(e *encoder, m guest.Mount) {
		e.string(m.Source)
		e.string(m.Target)
		e.bool(m.ReadOnly)
		e.string(m.Beneath)
	})
	encodeSlice(e, c.Volumes, func(e *encoder, v VolumeTarget) {
		e.string(v.Target)
		e.bool(v.Dir)
	})
	encodeSlice(e, c.Tmpfs, func(e *encoder, t guest.Tmpfs) {
		e.string(t.Guest)
		e.int(int64(t.SizeMiB))
	})
	e.int(int64(c.Procs))
	e.string(c.Hostname)
	e.string(c.Workdir)
	e.uint(uint64(c.User.UID))
	e.uint(uint64(c.User.GID))
	encodeSlice(e, c.User.AdditionalGids, func(e *encoder, g uint32) { e.uint(uint64(g)) })
	e.uint(c.Caps)
	e.uint(c.NoFile)
	e.int(int64(c.OOMScore))
	e.uint(c.TimerSlack)
	e.strings(c.Env)
	return e.b, nil
}

// UnmarshalBinary decodes what MarshalBinary encoded into c, leaving its
// Stage and descriptors as they are; an error wrapping errDamaged if data
// is not such a message.
func (c *Config) UnmarshalBinary(data []byte) error {
	d := newDecoder(data)
	c.Root = d.string()
	c.Layers = d.strings()
	c.Upper = d.string()
	c.Work = d.string()
	c.Disk = d.string()
	c.Build = nil
	if d.bool() {
		c.Build = &RootBuild{
			Dirs: d.strings(),
			Links: decodeSlice(d, func(d *decoder) guest.Link {
				return guest.Link{Path: d.string(), Target: d.string()}
			}),
			Files: decodeSlice(d, func(d *decoder) guest.File {
				return guest.File{Path: d.string(), Mode: d.uint32(), Content: d.bytes()}
			}),
			Layered: d.bool(),
			Mounts:  d.strings(),
		}
	}
	c.Binds = decodeSlice(d, func(d *decoder) guest.Mount {
		return guest.Mount{Source: d.string(), Target: d.string(), ReadOnly: d.bool(), Beneath: d.string()}
	})
	c.Volumes = decodeSlice(d, func(d *decoder) VolumeTarget {
		return VolumeTarget{Target: d.string(), Dir: d.bool()}
	})
	c.Tmpfs = decodeSlice(d, func(d *decoder) guest.Tmpfs {
		return guest.Tmpfs{Guest: d.string(), SizeMiB: d.int()}
	})
	c.Procs = d.int()
	c.Hostname = d.string()
	c.Workdir = d.string()
	c.User = guest.User{UID: d.uint32(), GID: d.uint32(), AdditionalGids: decodeSlice(d, (*decoder).uint32)}
	c.Caps = d.uint()
	c.NoFile = d.uint()
	c.OOMScore = d.int()
	c.TimerSlack = d.uint()
	c.Env = d.strings()
	return d.end()
}

// encoder appends values to b.
type encoder struct{ b []byte }

// newEncoder is an encoder of a message: wireLayout first.
func newEncoder() *encoder {
	e := &encoder{}
	e.uint(wireLayout)
	return e
}

func (e *encoder) uint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) int(v int64)   { e.b = binary.AppendVarint(e.b, v) }

func (e *encoder) bool(v bool) {
	if v {
		e.b = append(e.b, 1)
	} else {
		e.b = append(e.b, 0)
	}
}

func (e *encoder) string(s string) {
	e.uint(uint64(len(s)))
	e.b = append(e.b, s...)
}

func (e *encoder) bytes(p []byte) {
	e.uint(uint64(len(p)))
	e.b = append(e.b, p...)
}

func (e *encoder) strings(ss []string) { encodeSlice(e, ss, (*encoder).string) }

// encodeSlice appends s, each element by elem.
func encodeSlice[T any](e *encoder, s []T, elem func(*encoder, T)) {
	e.uint(uint64(len(s)))
	for _, v := range s {
		elem(e, v)
	}
}

// decoder reads values from b. Its first failure sticks: from then on
// every read returns the zero value, and end the failure.
type decoder struct {
	b    []byte
	size int // of the whole message
	at   int // where the value being read starts, for a failure
	err  error
}

// newDecoder is a decoder of the message data, which must start with
// wireLayout.
func newDecoder(data []byte) *decoder {
	d := &decoder{b: data, size: len(data)}
	if l := d.uint(); d.err == nil && l != wireLayout {
		d.err = fmt.Errorf("%w: a message from a server of another build (layout %#x, this init's %#x): build msb and its portal binary from the same source", errDamaged, l, wireLayout)
	}
	return d
}

// errDamaged is the error of a message that is not one of ours.
var errDamaged = errors.New("a damaged message")

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s at byte %d", errDamaged, what, d.at)
		d.b = nil
	}
}

func (d *decoder) uint() uint64 {
	if d.err != nil {
		return 0
	}
	d.at = d.size - len(d.b)
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("no unsigned integer")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uint32() uint32 {
	v := d.uint()
	if v > math.MaxUint32 {
		d.fail("an integer past 32 bits")
		return 0
	}
	return uint32(v)
}

func (d *decoder) int() int {
	if d.err != nil {
		return 0
	}
	d.at = d.size - len(d.b)
	v, n := binary.Varint(d.b)
	switch {
	case n <= 0:
		d.fail("no integer")
		return 0
	case int64(int(v)) != v:
		d.fail("an integer past int")
		return 0
	}
	d.b = d.b[n:]
	return int(v)
}

func (d *decoder) bool() bool {
	if d.err != nil {
		return false
	}
	d.at = d.size - len(d.b)
	if len(d.b) == 0 || d.b[0] > 1 {
		d.fail("no bool")
		return false
	}
	v := d.b[0] == 1
	d.b = d.b[1:]
	return v
}

// length reads the length of a string or slice: never more than the bytes
// left, since every byte or element takes at least one.
func (d *decoder) length() int {
	n := d.uint()
	if n > uint64(len(d.b)) {
		d.fail("a length past the end")
		return 0
	}
	return int(n)
}

func (d *decoder) string() string {
	n := d.length()
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// bytes reads a []byte: nil when empty.
func (d *decoder) bytes() []byte {
	n := d.length()
	if n == 0 {
		return nil
	}
	p := append([]byte(nil), d.b[:n]...)
	d.b = d.b[n:]
	return p
}

func (d *decoder) strings() []string { return decodeSlice(d, (*decoder).string) }

// end is the decoder's failure, or one if bytes are left.
func (d *decoder) end() error {
	if d.err == nil && len(d.b) > 0 {
		d.at = d.size - len(d.b)
		d.fail("bytes past the end")
	}
	return d.err
}

// decodeSlice reads a slice of elements each read by elem: nil when empty.
func decodeSlice[T any](d *decoder, elem func(*decoder) T) []T {
	n := d.length()
	if n == 0 {
		return nil
	}
	s := make([]T, n)
	for i := range s {
		s[i] = elem(d)
	}
	return s
}
