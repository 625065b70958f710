package guest

import (
	"slices"
	"testing"
)

// A call's limits go on top of its sandbox's, never above their hard limits.
func TestMergeRlimits(t *testing.T) {
	base := []Rlimit{{Resource: "nofile", Soft: 64, Hard: 128}, {Resource: "nproc", Soft: 10, Hard: 10}}
	got := MergeRlimits(base, []Rlimit{{Resource: "nofile", Soft: 100, Hard: 1024}, {Resource: "core", Soft: 0, Hard: 0}})
	want := []Rlimit{{Resource: "nofile", Soft: 100, Hard: 128}, {Resource: "nproc", Soft: 10, Hard: 10}, {Resource: "core"}}
	if !slices.Equal(got, want) {
		t.Fatalf("MergeRlimits = %+v, want %+v", got, want)
	}
	if base[0].Hard != 128 || base[0].Soft != 64 {
		t.Fatal("MergeRlimits changed its base")
	}
}
