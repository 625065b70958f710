package boot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/msb-dev/msb/sandbox/guest"
)

// notSent are the fields of a Config that MarshalBinary leaves out: the
// Stage goes first, on its own, and the descriptors alongside.
var notSent = map[string]bool{"Stage": true, "DiskFD": true, "RootFD": true, "volumeFDs": true}

// fill sets every field v holds (but notSent's) to a value of its own,
// distinct from its zero: one that MarshalBinary forgets, or decodes into
// another field, fails the round trip. A kind fill does not know fails
// the test, so that a new field cannot slip past it unfilled.
func fill(t testing.TB, v reflect.Value, n *int) {
	t.Helper()
	*n++
	switch v.Kind() {
	case reflect.String:
		v.SetString(fmt.Sprint("s", *n))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64:
		v.SetInt(-int64(*n) * 1000003)
	case reflect.Uint32:
		v.SetUint(1<<31 + uint64(*n))
	case reflect.Uint64:
		v.SetUint(1<<63 + uint64(*n))
	case reflect.Uint8:
		v.SetUint(uint64(*n))
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		for i := range 2 {
			fill(t, v.Index(i), n)
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(t, v.Elem(), n)
	case reflect.Struct:
		for i := range v.NumField() {
			if notSent[v.Type().Field(i).Name] {
				continue
			}
			fill(t, v.Field(i), n)
		}
	default:
		t.Fatalf("fill: no value for a %s (%s): teach fill, and MarshalBinary", v.Kind(), v.Type())
	}
}

// filled are a Config and a Stage with every field set (fill).
func filled(t testing.TB) (Config, Stage) {
	t.Helper()
	var n int
	var c Config
	fill(t, reflect.ValueOf(&c).Elem(), &n)
	var st Stage
	fill(t, reflect.ValueOf(&st).Elem(), &n)
	return c, st
}

func TestWireRoundTrip(t *testing.T) {
	c, st := filled(t)

	data, err := c.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got := Config{Stage: st, DiskFD: 7, RootFD: 8}
	if err := got.UnmarshalBinary(data); err != nil {
		t.Fatal(err)
	}
	want := c
	want.Stage, want.DiskFD, want.RootFD = st, 7, 8 // kept as they were
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the config decodes to\n%+v\nwant\n%+v", got, want)
	}

	data, err = st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var gotSt Stage
	if err := gotSt.UnmarshalBinary(data); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotSt, st) {
		t.Errorf("the stage decodes to %+v, want %+v", gotSt, st)
	}
}

// Empty strings, a nil or empty Build and zero or negative numbers decode
// as they were sent; empty slices (and an empty file's content) decode as
// nil, which no reader of these types tells apart.
func TestWireZero(t *testing.T) {
	c := Config{Build: &RootBuild{}, OOMScore: -1000}
	data, _ := c.MarshalBinary()
	var got Config
	if err := got.UnmarshalBinary(data); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("decodes to %+v, want %+v", got, c)
	}
	data, _ = (&Config{}).MarshalBinary()
	got = Config{Build: &RootBuild{}, Env: []string{"A=b"}}
	if err := got.UnmarshalBinary(data); err != nil {
		t.Fatal(err)
	}
	if got.Build != nil || got.Env != nil {
		t.Errorf("decoding a zero config left %+v", got)
	}
	data, _ = (&Config{Env: []string{}, Layers: []string{}, Build: &RootBuild{Files: []guest.File{{Content: []byte{}}}}}).MarshalBinary()
	got = Config{}
	if err := got.UnmarshalBinary(data); err != nil {
		t.Fatal(err)
	}
	if got.Env != nil || got.Layers != nil || got.Build == nil || len(got.Build.Files) != 1 || got.Build.Files[0].Content != nil {
		t.Errorf("empty slices decode to %+v, want nil ones", got)
	}
}

// A message cut short, with bytes past its end, or with a length, a bool
// or an integer that is not one, fails with an error, never a panic or an
// allocation past its own size.
func TestWireDamaged(t *testing.T) {
	c, _ := filled(t)
	data, _ := c.MarshalBinary()
	for i := range len(data) {
		var got Config
		if err := got.UnmarshalBinary(data[:i]); !errors.Is(err, errDamaged) {
			t.Fatalf("the first %d of %d bytes: err = %v, want a damaged message", i, len(data), err)
		}
	}
	var got Config
	if err := got.UnmarshalBinary(append(data[:len(data):len(data)], 0)); err == nil || !strings.Contains(err.Error(), "bytes past the end") {
		t.Errorf("a byte past the end: err = %v", err)
	}

	var st Stage
	layout := binary.AppendUvarint(nil, wireLayout)
	at := func(n int) string { return fmt.Sprint("at byte ", len(layout)+n) }
	for _, bad := range []struct {
		name string
		data []byte
		want string
	}{
		{"a bool of 2", []byte{2}, "no bool " + at(0)},
		{"a huge length", []byte{0, 0xff, 0xff, 0xff, 0xff, 0x0f}, "a length past the end " + at(1)},
		{"a varint never ending", []byte{0, 0x80, 0x80}, "no unsigned integer " + at(1)},
	} {
		if err := st.UnmarshalBinary(append(layout[:len(layout):len(layout)], bad.data...)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: err = %v, want %q", bad.name, err, bad.want)
		}
	}
	// Another build's message: refused at its first byte, saying why.
	other, _ := (&Stage{Dir: "/x"}).MarshalBinary()
	other = append(binary.AppendUvarint(nil, wireLayout+1), other[len(layout):]...)
	if err := st.UnmarshalBinary(other); !errors.Is(err, errDamaged) || !strings.Contains(err.Error(), "another build") {
		t.Errorf("a message of another layout: err = %v", err)
	}

	// A uid past 32 bits: a config of zeros up to the user, then 1<<32.
	zero, _ := (&Config{}).MarshalBinary()
	uid := len(zero) - 8 // the uid, then gid, gids, caps, nofile, oom, slack, env
	bad := append(append(append([]byte(nil), zero[:uid]...), 0x80, 0x80, 0x80, 0x80, 0x10), zero[uid+1:]...)
	if err := got.UnmarshalBinary(bad); err == nil || !strings.Contains(err.Error(), "an integer past 32 bits") {
		t.Errorf("a uid of 1<<32: err = %v", err)
	}
	// An OOM score past int (on a 32-bit machine: past 2^31).
	bad = binary.AppendVarint(append([]byte(nil), zero[:len(zero)-3]...), math.MaxInt64)
	bad = append(bad, 0, 0) // no slack, no env
	if err := got.UnmarshalBinary(bad); strconv.IntSize == 32 && (err == nil || !strings.Contains(err.Error(), "an integer past int")) {
		t.Errorf("an OOM score of 2^63-1 on a 32-bit machine: err = %v", err)
	} else if strconv.IntSize == 64 && (err != nil || got.OOMScore != math.MaxInt64) {
		t.Errorf("an OOM score of 2^63-1: %d, %v", got.OOMScore, err)
	}
}

// TestWireLayout checks that the encoding follows the order in which the
// types declare their fields (read back by reflection, in that order),
// and that wireLayout is the CRC-32 of that layout: a change to the types
// changes what a message starts with, and an init of another build
// refuses it.
func TestWireLayout(t *testing.T) {
	c, st := filled(t)
	for _, v := range []any{&c, &st} {
		data, _ := v.(interface{ MarshalBinary() ([]byte, error) }).MarshalBinary()
		d := newDecoder(data)
		got := reflect.New(reflect.TypeOf(v).Elem())
		readByReflection(t, d, got.Elem())
		if err := d.end(); err != nil {
			t.Fatalf("%T read by reflection: %v", v, err)
		}
		if !reflect.DeepEqual(got.Interface(), v) {
			t.Errorf("%T read in the order its type declares:\n%+v\nwant\n%+v", v, got.Elem(), reflect.ValueOf(v).Elem())
		}
	}
	var b strings.Builder
	for _, v := range []any{Stage{}, Config{}} {
		layout(&b, reflect.TypeOf(v))
	}
	if sum := crc32.ChecksumIEEE([]byte(b.String())); sum != wireLayout {
		t.Errorf("the layout of Stage and Config changed: set wireLayout to %#x (%s)", sum, b.String())
	}
}

// readByReflection reads v from d in the order its type declares its
// fields, as the encoding must.
func readByReflection(t *testing.T, d *decoder, v reflect.Value) {
	t.Helper()
	switch v.Kind() {
	case reflect.String:
		v.SetString(d.string())
	case reflect.Bool:
		v.SetBool(d.bool())
	case reflect.Int, reflect.Int64:
		v.SetInt(int64(d.int()))
	case reflect.Uint32:
		v.SetUint(uint64(d.uint32()))
	case reflect.Uint64:
		v.SetUint(d.uint())
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			v.SetBytes(d.bytes())
			return
		}
		if n := d.length(); n > 0 {
			v.Set(reflect.MakeSlice(v.Type(), n, n))
			for i := range n {
				readByReflection(t, d, v.Index(i))
			}
		}
	case reflect.Pointer:
		if d.bool() {
			v.Set(reflect.New(v.Type().Elem()))
			readByReflection(t, d, v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if !notSent[v.Type().Field(i).Name] {
				readByReflection(t, d, v.Field(i))
			}
		}
	default:
		t.Fatalf("readByReflection: no reader for a %s (%s)", v.Kind(), v.Type())
	}
}

// layout writes the layout of t (its fields' names and types, in order,
// those of the structs it holds within) to b.
func layout(b *strings.Builder, t reflect.Type) {
	switch t.Kind() {
	case reflect.Slice:
		b.WriteString("[]")
		layout(b, t.Elem())
	case reflect.Pointer:
		b.WriteString("*")
		layout(b, t.Elem())
	case reflect.Struct:
		b.WriteString(t.Name() + "{")
		for i := range t.NumField() {
			if f := t.Field(i); !notSent[f.Name] {
				b.WriteString(f.Name + " ")
				layout(b, f.Type)
				b.WriteString(";")
			}
		}
		b.WriteString("}")
	default:
		b.WriteString(t.Kind().String())
	}
}

// FuzzConfigWire: no input makes the decoder panic, and what it decodes
// encodes to a message that decodes the same.
func FuzzConfigWire(f *testing.F) {
	c, _ := filled(f)
	full, _ := c.MarshalBinary()
	zero, _ := (&Config{}).MarshalBinary()
	f.Add(full)
	f.Add(zero)
	f.Add(append(zero[:len(zero)-1:len(zero)-1], 1, 0))
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		var got Config
		if got.UnmarshalBinary(data) != nil {
			return
		}
		again, _ := got.MarshalBinary()
		var back Config
		if err := back.UnmarshalBinary(again); err != nil || !reflect.DeepEqual(back, got) {
			t.Fatalf("decoded %+v; encoded again, %+v, %v", got, back, err)
		}
	})
}
