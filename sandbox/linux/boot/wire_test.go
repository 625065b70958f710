package boot

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// notSent are the fields of a Config that MarshalBinary leaves out: the
// Stage goes first, on its own, and the descriptors alongside.
var notSent = map[string]bool{"Stage": true, "DiskFD": true, "RootFD": true, "volumeFDs": true}

// fill sets every field v holds (but notSent's) to a value of its own,
// distinct from its zero: one that MarshalBinary forgets, or decodes into
// another field, fails the round trip. A kind fill does not know fails
// the test, so that a new field cannot slip past it unfilled.
func fill(t *testing.T, v reflect.Value, n *int) {
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

func TestWireRoundTrip(t *testing.T) {
	var n int
	var c Config
	fill(t, reflect.ValueOf(&c).Elem(), &n)
	var st Stage
	fill(t, reflect.ValueOf(&st).Elem(), &n)

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

// Empty slices and strings, a nil Build and zero numbers decode as they
// were sent (nil slices: what JSON's omitempty gave the init before).
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
}

// A message cut short, with bytes past its end, or with a length, a bool
// or an integer that is not one, fails with an error, never a panic or an
// allocation past its own size.
func TestWireDamaged(t *testing.T) {
	var n int
	var c Config
	fill(t, reflect.ValueOf(&c).Elem(), &n)
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
	for _, bad := range []struct {
		name string
		data []byte
		want string
	}{
		{"a bool of 2", []byte{2}, "no bool at byte 0"},
		{"a huge length", []byte{0, 0xff, 0xff, 0xff, 0xff, 0x0f}, "a length past the end at byte 6"},
		{"a varint never ending", []byte{0, 0x80, 0x80}, "no unsigned integer at byte 1"},
	} {
		if err := st.UnmarshalBinary(bad.data); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: err = %v, want %q", bad.name, err, bad.want)
		}
	}
	// A uid past 32 bits: a config of zeros up to the user, then 1<<32.
	zero, _ := (&Config{}).MarshalBinary()
	at := len(zero) - 7 // the uid, then gid, gids, caps, nofile, oom, env
	bad := append(append(append([]byte(nil), zero[:at]...), 0x80, 0x80, 0x80, 0x80, 0x10), zero[at+1:]...)
	if err := got.UnmarshalBinary(bad); err == nil || !strings.Contains(err.Error(), "an integer past 32 bits") {
		t.Errorf("a uid of 1<<32: err = %v", err)
	}
}
