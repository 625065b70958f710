package server

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
)

// The server runs the portal binary msb carries, quietly; when msb carries
// none (or one it refused), it runs the binary of the running server, not
// whatever its path names now, and says why.
func TestPortalBinaryFallback(t *testing.T) {
	defer func(saved func() (io.ReaderAt, error)) { carriedPortal = saved }(carriedPortal)
	var log bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&log, nil))

	carried := strings.NewReader("binary")
	carriedPortal = func() (io.ReaderAt, error) { return carried, nil }
	path, image := portalBinary(logger)
	if path != "" || image != carried || log.Len() > 0 {
		t.Errorf("with a portal binary: %q, %q, logged %q", path, image, log.String())
	}

	carriedPortal = func() (io.ReaderAt, error) { return nil, errors.New("built from another revision") }
	path, image = portalBinary(logger)
	if path != "/proc/self/exe" || image != nil {
		t.Errorf("without one: %q, %q; want /proc/self/exe", path, image)
	}
	if out := log.String(); !strings.Contains(out, "run msb itself") || !strings.Contains(out, "built from another revision") {
		t.Errorf("without one, logged %q", out)
	}
}
