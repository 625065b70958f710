package sandbox

import (
	"errors"
	"io"
)

// OwnReader wraps R so that Own tells an error R returned from the errors
// of whoever reads it: a file handle classifies the errors of a transfer
// as its own, but passes its caller's (a request body that broke off) on
// as they are.
type OwnReader struct {
	R   io.Reader
	err error
}

func (o *OwnReader) Read(p []byte) (int, error) {
	n, err := o.R.Read(p)
	if err != nil && err != io.EOF {
		o.err = err
	}
	return n, err
}

// Own reports whether err is, or wraps, an error R returned.
func (o *OwnReader) Own(err error) bool { return err != nil && o.err != nil && errors.Is(err, o.err) }

// OwnWriter is OwnReader's twin for a writer W.
type OwnWriter struct {
	W   io.Writer
	err error
}

func (o *OwnWriter) Write(p []byte) (int, error) {
	n, err := o.W.Write(p)
	if err != nil {
		o.err = err
	}
	return n, err
}

// Own reports whether err is, or wraps, an error W returned.
func (o *OwnWriter) Own(err error) bool { return err != nil && o.err != nil && errors.Is(err, o.err) }
