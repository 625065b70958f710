package image_test

import (
	"context"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/msb-dev/msb/sandbox/image"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

// TestPullOnceAfterPullEnded is a Get that found nothing in the cache and
// then reached pullOnce just after another Get's pull of the same image
// ended: it must use what that pull stored, not pull again (here the
// registry is gone, so a second pull would fail).
func TestPullOnceAfterPullEnded(t *testing.T) {
	t.Parallel()
	reg := sandboxtest.NewRegistry(t)
	ref := reg.Push(t, "test/race:1", sandboxtest.Image(t, v1.Config{}, sandboxtest.Layer(t, sandboxtest.File("f", "x", 0o644))))
	s := newStore(t)
	r, err := image.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := image.PullOnce(s, context.Background(), ref, r); err != nil {
		t.Fatal(err)
	}
	gets := reg.BlobGets("")
	reg.Close()
	rec, err := image.PullOnce(s, context.Background(), ref, r)
	if err != nil || rec.Name != ref {
		t.Errorf("pullOnce of an image a pull just recorded = %+v, %v; want it from the cache", rec, err)
	}
	if n := reg.BlobGets(""); n != gets {
		t.Errorf("%d blobs downloaded again", n-gets)
	}
}
