package auth

import "errors"

// ErrUnauthenticated is matched (errors.Is) by every error that means the
// request carries no usable API key; the rpc layer answers 401 with the
// error's own message, which names the cause and never the key.
var ErrUnauthenticated = errors.New("authentication failed")

// The causes of a 401, with the messages clients show.
var (
	ErrKeyRequired = &authError{"API key is required"}
	ErrInvalidKey  = &authError{"invalid API key"}
	ErrExpired     = &authError{"API key has expired"}
	ErrRevoked     = &authError{"API key has been revoked"}
)

// ErrKeyNotFound is returned by the registry for an unknown key id.
var ErrKeyNotFound = errors.New("no such API key")

type authError struct{ msg string }

func (e *authError) Error() string        { return e.msg }
func (e *authError) Is(target error) bool { return target == ErrUnauthenticated }
