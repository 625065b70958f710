package server

import (
	"context"
	"encoding/json"
	"maps"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/rpc"
	"github.com/msb-dev/msb/sandbox"
)

// methods is the server's one JSON-RPC method table: sandboxes and their
// files, keys, audit.
func methods(sandboxes sandbox.API, home *Home, dev bool) rpc.Methods {
	all := rpc.SandboxMethods(sandboxes)
	maps.Copy(all, rpc.FileMethods(sandboxes.Sessions()))
	keys := rpc.KeyMethods(home.Keys())
	if dev {
		// Without authentication anyone on the machine is the operator:
		// keys made then would outlive development mode with full rights.
		for name := range keys {
			keys[name] = rpc.Method[json.RawMessage]{Handle: func(context.Context, *rpc.Call, json.RawMessage) (any, error) {
				return nil, errdefs.Forbiddenf("%s is not available in development mode (--dev): restart the server without --dev, or use `msb server keygen`", name)
			}}
		}
	}
	maps.Copy(all, keys)
	maps.Copy(all, rpc.AuditMethods(home.DB))
	return all
}
